-- pace.lua: take one token of each of a host's rates (its own, its shared cap's) for a
-- request on a connection it already holds, or none.
--
-- KEYS[i]  a rate hash (as KEYS[4] of acquire.lua: tat and interval, µs of Redis time)
-- ARGV[2i - 1], ARGV[2i]  that rate's emission interval T and tolerance tau, µs ("" = none)
-- Returns 0 if every token was taken, else the µs until all are there (nothing is taken then).
local now, now_us = redis_clock()
local rates, wait = {}, 0
for i, key in ipairs(KEYS) do
  if ARGV[2 * i - 1] ~= '' then
    local interval, tolerance = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
    local stored = redis.call('HMGET', key, 'tat', 'interval')
    local tat = tonumber(stored[1] or 0)
    local old = tonumber(stored[2] or interval)
    if tat > now_us and old ~= interval then
      tat = now_us + (tat - now_us) / old * interval
    end
    local early = math.max(tat, now_us) - tolerance - now_us
    if early > 0.001 then
      wait = math.max(wait, math.ceil(early))
    end
    rates[#rates + 1] = {key = key, start = math.max(tat, now_us), interval = interval}
  end
end
if wait > 0 then
  return wait
end
for _, rate in ipairs(rates) do
  local next_tat = rate.start + rate.interval
  redis.call('HSET', rate.key, 'tat', next_tat, 'interval', rate.interval)
  redis.call('PEXPIRE', rate.key, math.ceil((next_tat - now_us) / 1000) + 1000)
end
return 0
