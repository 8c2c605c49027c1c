-- acquire.lua: take one slot for a host if the fleet is below its limit.
--
-- KEYS[1]  counts hash  (worker id -> this worker's open connections to the host)
-- KEYS[2]  leases zset  (worker id -> lease expiry, ms of Redis server time)
-- KEYS[3]  epoch marker (a string naming the life of this store's data; see below)
-- ARGV[1]  worker id
-- ARGV[2]  limit (0 = unlimited)
-- ARGV[3]  lease ttl, ms
-- ARGV[4]  key ttl, ms (safety net: keys of a host nobody refreshes disappear)
-- ARGV[5]  the epoch this worker knows ("" if none yet)
-- ARGV[6]  a new epoch, used if the marker is missing
-- Returns {admitted, fleet count after, this worker's count before (-1 if absent), epoch}
--   admitted: 1, 0 (at the limit), or -1: the marker is missing or is not the epoch this
--   worker knows, so this store lost data (restart, FLUSHALL, failover) and counts held
--   elsewhere may be missing: nothing is admitted until holders have re-asserted them.
--
-- Cost: O(workers holding this host).
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[4])
  if ARGV[5] ~= '' then
    return {-1, 0, -1, epoch}
  end
elseif ARGV[5] ~= '' and epoch ~= ARGV[5] then
  return {-1, 0, -1, epoch}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Read everything first, write after: a key emptied by a write must not be touched again
-- in this script (during a Cluster resharding that is an error, "non local key").
local fields = redis.call('HGETALL', KEYS[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local dead = {}
for _, worker in ipairs(expired) do
  dead[worker] = true
end
local total, own = 0, -1
for i = 1, #fields, 2 do
  if not dead[fields[i]] then
    local count = tonumber(fields[i + 1])
    total = total + count
    if fields[i] == ARGV[1] then
      own = count
    end
  end
end
local limit = tonumber(ARGV[2])
local admitted = 0
if limit == 0 or total < limit then
  admitted = 1
  if own < 0 then
    -- first slot of this worker here (or its lease had lapsed): a fresh count and lease, and
    -- the keys their expiry. While it holds any, its refresh renews both every lease_ttl/3.
    redis.call('HSET', KEYS[1], ARGV[1], 1)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  else
    redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  end
end
-- Drop workers whose lease expired (killed without a goodbye): their slots come back
-- within one lease ttl. This worker's own entry, just renewed, is not among them.
local others = {}
for _, worker in ipairs(expired) do
  if admitted == 0 or worker ~= ARGV[1] then
    others[#others + 1] = worker
  end
end
if #others > 0 then
  redis.call('HDEL', KEYS[1], unpack(others))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
return {admitted, total + admitted, own, epoch}
