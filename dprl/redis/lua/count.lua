-- count.lua: the fleet's open connections to a host, counting live leases only.
--
-- KEYS[1]  counts hash, KEYS[2]  leases zset (as in acquire.lua)
-- Returns the sum of the counts of workers whose lease has not expired. Read-only.
local now = redis_clock()
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local lease = tonumber(redis.call('ZSCORE', KEYS[2], fields[i]) or 0)
  if lease > now then
    total = total + tonumber(fields[i + 1])
  end
end
return total
