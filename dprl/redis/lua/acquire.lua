-- acquire.lua: take one slot for a host if the fleet is below its limit.
--
-- KEYS[1]  counts hash  (worker id -> this worker's open connections to the host)
-- KEYS[2]  leases zset  (worker id -> lease expiry, ms of Redis server time)
-- ARGV[1]  worker id
-- ARGV[2]  limit (0 = unlimited)
-- ARGV[3]  lease ttl, ms
-- ARGV[4]  key ttl, ms (safety net: keys of a host nobody refreshes disappear)
-- Returns {admitted (1 or 0), fleet count after, this worker's count before (-1 if absent)}
--
-- Workers whose lease has expired (killed without a goodbye) are dropped first, so their
-- slots come back within one lease ttl. Cost: O(workers holding this host).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local total, own = 0, -1
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local count = tonumber(fields[i + 1])
  total = total + count
  if fields[i] == ARGV[1] then
    own = count
  end
end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then
  return {0, total, own}
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if own < 0 then
  -- first slot of this worker here: give it a lease, and the keys their expiry. While it
  -- holds any, its refresh renews both every lease_ttl/3.
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return {1, total + 1, own}
