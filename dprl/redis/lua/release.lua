-- release.lua: give back one slot of this worker, in one step (no DECR-then-DEL race).
--
-- KEYS[1]  counts hash, KEYS[2]  leases zset (as in acquire.lua)
-- ARGV[1]  worker id
-- Returns this worker's count after, or -1 if it had none: Redis lost it (restart), and
-- the worker should refresh its absolute counts at once.
local own = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or -1)
if own < 1 then
  return -1
end
if own > 1 then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
