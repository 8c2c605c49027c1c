-- limits_read.lua: the fleet's stored limits in one consistent read.
--
-- KEYS[1]  hosts hash, KEYS[2]  default, KEYS[3]  version (as in limits.lua)
-- ARGV[1]  the version the worker has ("" if none): when it is current, only it is returned
-- Returns {version, default or false, {host, limit, host, limit, ...} or false}
local version = redis.call('GET', KEYS[3]) or '0'
if version == ARGV[1] then
  return {version, false, false}
end
return {version, redis.call('GET', KEYS[2]), redis.call('HGETALL', KEYS[1])}
