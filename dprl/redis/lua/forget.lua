-- forget.lua: remove a dead worker's part of one count at once (its supervisor saw it die).
--
-- KEYS[1]  counts hash, KEYS[2]  leases zset (of a host, or of a shared cap), or
--          KEYS[1]  a waiting zset and KEYS[2] the same (its waiters stop counting)
-- ARGV[1]  the dead worker's id
-- Returns 1 if the worker had a part here. Reads before it writes (see acquire.lua).
if redis.call('TYPE', KEYS[1]).ok == 'zset' then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if redis.call('HLEN', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
