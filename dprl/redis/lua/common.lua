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


-- A count is a hash (worker -> open connections) and a lease zset (worker -> expiry, ms):
-- its total leaves out workers whose lease expired at `now` (killed without a goodbye).
-- Returns the total, `worker`'s own count (-1 if absent) and the expired workers.
local function read_count(counts, leases, now, worker)
  local fields = redis.call('HGETALL', counts)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  local gone = {}
  for _, w in ipairs(expired) do
    gone[w] = true
  end
  local total, own = 0, -1
  for i = 1, #fields, 2 do
    if not gone[fields[i]] then
      local count = tonumber(fields[i + 1])
      total = total + count
      if fields[i] == worker then
        own = count
      end
    end
  end
  return total, own, expired
end

-- The tenants that divide a host (ARGV from `at`: the caller's tenant, how many (n), then
-- for each its name, weight, ceiling in slots and max as a part of 1; KEYS from `first`:
-- for each its counts hash, leases zset, queue zset and rate hash at the host). Returns the
-- tenants in order and the caller's (nil if it is not among them).
local function read_tenants(at, first)
  local tenants, me = {}, nil
  for j = 1, tonumber(ARGV[at + 1]) do
    local a, k = at + 2 + 4 * (j - 1), first + 4 * (j - 1)
    local t = {name = ARGV[a], weight = tonumber(ARGV[a + 1]), ceiling = tonumber(ARGV[a + 2]),
               max_part = tonumber(ARGV[a + 3]), counts = KEYS[k], leases = KEYS[k + 1],
               queue = KEYS[k + 2], rate = KEYS[k + 3], live = {}, dead = {}}
    tenants[j] = t
    if t.name == ARGV[at] then
      me = t
    end
  end
  return tenants, me
end

-- The caller's tenant's part of a host's rate (T `interval`, tau `tolerance`, µs), as
-- TenantShares.rate_of in dprl/limits/tenants.py: by weight among the tenants that are
-- active (holding, waiting, or with tokens taken lately: `t.active`) and itself, at most
-- its max. Returns the part's T and tau, or nil when the part is the whole rate.
local function tenant_rate(tenants, me, interval, tolerance, now_us)
  local total = 0
  for _, t in ipairs(tenants) do
    if t == me or t.active or tonumber(redis.call('HGET', t.rate, 'tat') or 0) > now_us then
      total = total + t.weight
    end
  end
  local part = math.min(me.weight / total, me.max_part)
  if part >= 1 then
    return nil
  end
  local burst = math.floor(tolerance / interval + 0.5) + 1
  local t = interval / part
  return t, (math.max(1, math.floor(burst * part + 1e-9)) - 1) * t
end
