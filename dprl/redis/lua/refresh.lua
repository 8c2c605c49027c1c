-- refresh.lua: set this worker's absolute count for a host and renew its lease.
--
-- KEYS[1]  counts hash, KEYS[2]  leases zset, KEYS[3]  epoch marker (as in acquire.lua)
-- ARGV[1]  worker id
-- ARGV[2]  this worker's count (0 removes it: also the goodbye at graceful stop)
-- ARGV[3]  lease ttl, ms
-- ARGV[4]  key ttl, ms
-- ARGV[5]  the epoch this worker knows ("" if none yet)
-- ARGV[6]  a new epoch, used if the marker is missing
-- Returns {fleet count after, epoch, changed}: changed is 1 when the epoch was not the one
-- this worker knew (the store lost data): this count is applied all the same, it is what
-- restores the store, and the worker pauses its admissions while the others do likewise.
--
-- The worker counts a slot from before its acquire is sent until its release is
-- answered, and sends this script on the same ordered connection, so ARGV[2] can only
-- over-count, and only until the next refresh. Expired workers are dropped here too, so
-- a host that nobody acquires any more still loses a dead worker's slots.
local epoch = redis.call('GET', KEYS[3])
local changed = 0
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[4])
  if ARGV[5] ~= '' then
    changed = 1
  end
else
  if ARGV[5] ~= '' and epoch ~= ARGV[5] then
    changed = 1
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
local now = redis_clock()
-- Read first, write after (see acquire.lua): no key is touched once a write emptied it.
local fields = redis.call('HGETALL', KEYS[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local dead = {}
for _, worker in ipairs(expired) do
  dead[worker] = true
end
local count = tonumber(ARGV[2])
local total = count
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] and not dead[fields[i]] then
    total = total + tonumber(fields[i + 1])
  end
end
if total == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {0, epoch, changed}
end
if count > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], count)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local others = {}
for _, worker in ipairs(expired) do
  if worker ~= ARGV[1] then
    others[#others + 1] = worker
  end
end
if #others > 0 then
  redis.call('HDEL', KEYS[1], unpack(others))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
return {total, epoch, changed}
