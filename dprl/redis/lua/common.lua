-- common.lua: helpers every script starts with (scripts.py puts this file before each
-- one when it loads it; each script's contract stays at the top of its own file).

-- Redis's own clock, in milliseconds and in microseconds: one clock for the whole fleet,
-- never a worker's.
local function redis_clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

-- The worker of a queue ticket "worker|sequence" (or "worker|sequence|tenant").
local function ticket_worker(ticket)
  return string.match(ticket, '^([^|]*)|')
end

-- Wake the worker of the first ticket in `tickets` whose worker's waiting lease (in the
-- zset `waiting`) is live at `now`: one PUBLISH of `message` on `prefix`..worker.
local function wake_first_live(tickets, waiting, prefix, message, now)
  for _, ticket in ipairs(tickets) do
    local worker = ticket_worker(ticket)
    if tonumber(redis.call('ZSCORE', waiting, worker) or 0) > now then
      redis.call('PUBLISH', prefix .. worker, message)
      return true
    end
  end
  return false
end

