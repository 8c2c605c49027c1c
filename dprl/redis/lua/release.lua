-- release.lua: give back one slot of this worker, in one step (no DECR-then-DEL race).
--
-- KEYS[1]  counts hash, KEYS[2]  leases zset, KEYS[3]  epoch marker (as in acquire.lua)
-- ARGV[1]  worker id
-- ARGV[2]  the epoch this worker knows
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
if own > 1 then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end
-- This worker's last slot here. Whether anyone else holds is read before the write: a key
-- emptied by a write must not be touched again in this script (see acquire.lua).
if redis.call('HLEN', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 0
