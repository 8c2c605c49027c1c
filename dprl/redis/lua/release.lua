-- release.lua: give back one slot of this worker, in one step (no DECR-then-DEL race).
--
-- KEYS[1]  counts hash, KEYS[2]  leases zset, KEYS[3]  epoch marker (as in acquire.lua)
-- ARGV[1]  worker id
-- ARGV[2]  the epoch this worker knows
-- KEYS[4]  queue zset, KEYS[5]  waiting zset (as in acquire.lua)
-- ARGV[3]  wake channel prefix, ARGV[4]  the waiting line (the host key, or shared:NAME)
-- A slot given back goes to the oldest live waiter, if any: its worker is woken (PUBLISH).
-- KEYS[6], KEYS[7]  the shared cap's counts and leases, when the host has one: given back too.
-- ARGV[5]  with tenants: how many (n); the last n + 2 KEYS are then the caller's tenant's counts
--          and leases here, and every tenant's queue (each one's oldest live waiter is woken:
--          the next in the fair order is among them, and the others ask and wait again).
-- Returns this worker's count after; -1 if it had none (Redis lost it: the worker should
-- refresh its absolute counts at once); -2 if the epoch is not the one the worker knows
-- (the store lost data: nothing is changed, the worker re-asserts).
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -2
end
local own = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or -1)
if own < 1 then
  return -1
end
local tenants = 0
if ARGV[5] ~= nil and ARGV[5] ~= '' then
  tenants = tonumber(ARGV[5])
end
local last_host_key = #KEYS
if tenants > 0 then
  last_host_key = #KEYS - tenants - 2
end
local function wake_oldest()
  if last_host_key < 5 then
    return  -- sent without the queue's keys (a Cluster slot being migrated): waiters poll
  end
  local now = redis_clock()
  if tenants > 0 then
    for j = #KEYS - tenants + 1, #KEYS do
      local head = redis.call('ZRANGE', KEYS[j], 0, 31)
      if #head > 0 then
        local tenant = string.match(head[1], '|([^|]*)$')
        wake_first_live(head, KEYS[5], ARGV[3], ARGV[4] .. '|' .. tenant, now)
      end
    end
    return
  end
  local head = redis.call('ZRANGE', KEYS[4], 0, 31)
  if #head == 0 then
    return
  end
  wake_first_live(head, KEYS[5], ARGV[3], ARGV[4], now)
end
-- One slot less for this worker in a count (hash + leases), deleting what it empties.
local function take_one(counts, leases, mine)
  if mine > 1 then
    return redis.call('HINCRBY', counts, ARGV[1], -1)
  end
  -- This worker's last slot here. Whether anyone else holds is read before the write: a key
  -- emptied by a write must not be touched again in this script (see acquire.lua).
  if redis.call('HLEN', counts) == 1 then
    redis.call('DEL', counts, leases)
  else
    redis.call('HDEL', counts, ARGV[1])
    redis.call('ZREM', leases, ARGV[1])
  end
  return 0
end
if last_host_key >= 7 then
  local shared = tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or -1)
  if shared >= 1 then
    take_one(KEYS[6], KEYS[7], shared)
  end
end
if tenants > 0 then
  local counts, leases = KEYS[last_host_key + 1], KEYS[last_host_key + 2]
  local mine = tonumber(redis.call('HGET', counts, ARGV[1]) or -1)
  if mine >= 1 then
    take_one(counts, leases, mine)
  end
end
local after = take_one(KEYS[1], KEYS[2], own)
wake_oldest()
return after
