-- refresh.lua: set this worker's absolute count for a host and renew its lease.
--
-- KEYS[1]  counts hash, KEYS[2]  leases zset (as in acquire.lua)
-- ARGV[1]  worker id
-- ARGV[2]  this worker's count (0 removes it: also the goodbye at graceful stop)
-- ARGV[3]  lease ttl, ms
-- ARGV[4]  key ttl, ms
-- Returns the fleet count after.
--
-- The worker counts a slot from before its acquire is sent until its release is
-- answered, and sends this script on the same ordered connection, so ARGV[2] can only
-- over-count, and only until the next refresh. Expired workers are dropped here too, so
-- a host that nobody acquires any more still loses a dead worker's slots.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local count = tonumber(ARGV[2])
if count > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], count)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local total = 0
for _, c in ipairs(redis.call('HVALS', KEYS[1])) do
  total = total + tonumber(c)
end
if total == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return total
