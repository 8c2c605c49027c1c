-- leave.lua: a waiter gives up its place (timed out, its client left, shutdown).
--
-- KEYS[1]  queue zset, KEYS[2]  waiting zset (KEYS[4] and KEYS[5] of acquire.lua)
-- ARGV[1]  the ticket, ARGV[2]  wake channel prefix, ARGV[3]  the host key
-- ARGV[4]  "1" if it was its worker's last waiter for the host (its waiting entry goes)
-- If the ticket had been woken for a free slot, that wake-up is not lost: the oldest live
-- waiter left is woken in its place. Returns 1 if the ticket was queued, else 0.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], string.match(ARGV[1], '^(.*)|'))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, ticket in ipairs(redis.call('ZRANGE', KEYS[1], 0, 31)) do
  local worker = string.match(ticket, '^(.*)|')
  if tonumber(redis.call('ZSCORE', KEYS[2], worker) or 0) > now then
    redis.call('PUBLISH', ARGV[2] .. worker, ARGV[3])
    break
  end
end
return removed
