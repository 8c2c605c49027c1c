-- leave.lua: a waiter gives up its place (timed out, its client left, shutdown).
--
-- KEYS[1]  queue zset, KEYS[2]  waiting zset (KEYS[4] and KEYS[5] of acquire.lua)
-- ARGV[1]  the ticket, ARGV[2]  wake channel prefix, ARGV[3]  the host key
-- ARGV[4]  "1" if it was its worker's last waiter for the host (its waiting entry goes)
-- If the ticket had been woken for a free slot, that wake-up is not lost: the oldest live
-- waiter left is woken in its place. Returns 1 if the ticket was queued, else 0.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], ticket_worker(ARGV[1]))
end
local now = redis_clock()
wake_first_live(redis.call('ZRANGE', KEYS[1], 0, 31), KEYS[2], ARGV[2], ARGV[3], now)
return removed
