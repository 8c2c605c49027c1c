-- pace.lua: take one token of each of a host's rates (its own, its shared cap's, and its
-- tenant's part of its own) for a request on a connection it already holds, or none.
--
-- ARGV[1]  how many rates (m): KEYS[1..m] are their hashes (the host's first; as KEYS[4]
--          of acquire.lua: tat and interval, µs of Redis time)
-- ARGV[2i], ARGV[2i + 1]  rate i's emission interval T and tolerance tau, µs ("" = none)
-- ARGV[2m + 2] "1" if tenants divide the host ("" or absent: no tenants); then, as ARGV[17..]
--          of acquire.lua, the caller's tenant, how many tenants (n) and each one's name,
--          weight, ceiling and max part; the last 4n KEYS are each one's counts, leases,
--          queue and rate hash at the host, as in acquire.lua.
-- Returns 0 if every token was taken, else the µs until all are there (nothing is taken then).
local now, now_us = redis_clock()
local m = tonumber(ARGV[1])
local wanted = {}
for i = 1, m do
  if ARGV[2 * i] ~= '' then
    wanted[#wanted + 1] = {key = KEYS[i], interval = tonumber(ARGV[2 * i]), tolerance = tonumber(ARGV[2 * i + 1])}
  end
end
local at = 2 * m + 2
if ARGV[at] == '1' and ARGV[2] ~= '' then
  local tenants, me = read_tenants(at + 1, m + 1)
  if me ~= nil then
    for _, t in ipairs(tenants) do
      t.active = read_count(t.counts, t.leases, now, '') > 0 or redis.call('ZCARD', t.queue) > 0
    end
    local part_t, part_tau = tenant_rate(tenants, me, tonumber(ARGV[2]), tonumber(ARGV[3]), now_us)
    if part_t ~= nil then
      wanted[#wanted + 1] = {key = me.rate, interval = part_t, tolerance = part_tau}
    end
  end
end
local rates, wait = {}, 0
for _, rate in ipairs(wanted) do
  local stored = redis.call('HMGET', rate.key, 'tat', 'interval')
  local tat = tonumber(stored[1] or 0)
  local old = tonumber(stored[2] or rate.interval)
  if tat > now_us and old ~= rate.interval then
    tat = now_us + (tat - now_us) / old * rate.interval
  end
  local early = math.max(tat, now_us) - rate.tolerance - now_us
  if early > 0.001 then
    wait = math.max(wait, math.ceil(early))
  end
  rate.start = math.max(tat, now_us)
  rates[#rates + 1] = rate
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
