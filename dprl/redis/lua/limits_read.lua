-- limits_read.lua: the fleet's stored limits and rates in one consistent read.
--
-- KEYS[1]  hosts hash, KEYS[2]  default, KEYS[3]  version, KEYS[4]  rates hash,
-- KEYS[5]  default rate (as in limits.lua)
-- ARGV[1]  the version the worker has ("" if none): when it is current, only it is returned
-- Returns {version, default or false, {host, limit, ...} or false, default rate or false,
--          {host, rate, ...} or false}
local version = redis.call('GET', KEYS[3]) or '0'
if version == ARGV[1] then
  return {version, false, false, false, false}
end
return {
  version,
  redis.call('GET', KEYS[2]),
  redis.call('HGETALL', KEYS[1]),
  redis.call('GET', KEYS[5]),
  redis.call('HGETALL', KEYS[4]),
}
