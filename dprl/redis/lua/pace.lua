-- pace.lua: take one token of a host's rate, for a request on a connection it already holds.
--
-- KEYS[1]  rate hash (as KEYS[4] of acquire.lua: tat and interval, µs of Redis time)
-- ARGV[1]  the emission interval T, µs, ARGV[2]  the tolerance tau, µs
-- Returns 0 if the token was taken, else the µs until it comes (nothing is taken then).
local now, now_us = redis_clock()
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local stored = redis.call('HMGET', KEYS[1], 'tat', 'interval')
local tat = tonumber(stored[1] or 0)
local old = tonumber(stored[2] or interval)
if tat > now_us and old ~= interval then
  tat = now_us + (tat - now_us) / old * interval
end
local early = math.max(tat, now_us) - tolerance - now_us
if early > 0.001 then
  return math.max(1, math.ceil(early))
end
local next_tat = math.max(tat, now_us) + interval
redis.call('HSET', KEYS[1], 'tat', next_tat, 'interval', interval)
redis.call('PEXPIRE', KEYS[1], math.ceil((next_tat - now_us) / 1000) + 1000)
return 0
