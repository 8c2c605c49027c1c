-- acquire.lua: take one slot for a host if the fleet is below its limit and its rate.
--
-- KEYS[1]  counts hash  (worker id -> this worker's open connections to the host)
-- KEYS[2]  leases zset  (worker id -> lease expiry, ms of Redis server time)
-- KEYS[3]  epoch marker (a string naming the life of this store's data; see below)
-- KEYS[4]  rate hash    (tat: the host's theoretical arrival time, µs of Redis time;
--                        interval: the emission interval it was computed in, µs)
-- ARGV[1]  worker id
-- ARGV[2]  limit (0 = unlimited)
-- ARGV[3]  lease ttl, ms
-- ARGV[4]  key ttl, ms (safety net: keys of a host nobody refreshes disappear)
-- ARGV[5]  the epoch this worker knows ("" if none yet)
-- ARGV[6]  a new epoch, used if the marker is missing
-- KEYS[5]  queue zset    (ticket "worker|seq" -> arrival, microseconds of Redis time)
-- KEYS[6]  waiting zset  (worker id -> expiry of its waiters, ms; renewed by each of its calls)
-- ARGV[7]  this caller's ticket, or "" (it does not wait: admitted or refused at once)
-- ARGV[8]  wake channel prefix (the channel of a worker is this prefix and its id)
-- ARGV[9]  the host key (the message of a wake-up)
-- ARGV[10] "1" if this ticket is its worker's last waiter for the host (its waiting entry goes)
-- KEYS[7]  shared cap counts hash, KEYS[8]  its leases zset (the hosts of a shared cap together;
--          same hash tag as KEYS[1..6]), ARGV[11]  the shared cap's limit ("" = no shared cap)
-- ARGV[12] the host's emission interval T = 1/rate, µs ("" = no rate), ARGV[13] its
--          tolerance tau = (burst - 1) * T, µs: GCRA as in dprl/limits/rates.py, on Redis's clock
-- KEYS[9]  the shared cap's rate hash (with KEYS[7], [8]), ARGV[14], ARGV[15]  its T and tau
--          ("" = the shared cap has no rate): one rate for all of its hosts
-- ARGV[16] "1" if tenants divide the host's own cap ("" = no tenants: the rest is absent);
-- ARGV[17] the caller's tenant, ARGV[18] how many tenants (n), then for each (ARGV[19 + 4(j-1)]..):
--          its name, weight, ceiling (its max, in slots) and max as a part of 1. The last 4n
--          KEYS are each tenant's counts hash, leases zset, queue zset (tickets
--          "worker|seq|tenant", each in its tenant's queue) and rate hash at this host. The fair
--          order of dprl/limits/tenants.py replaces arrival order, the caller's tenant must stay
--          under its ceiling, and with a host rate it takes a token of its tenant's part too.
-- Returns {admitted, fleet count after, this worker's count before (-1 if absent), epoch,
--          live waiters ahead of the ticket, 1 if another waiter of this worker may go now,
--          1 if refused by the shared cap rather than the host's own,
--          µs until this caller's token when the rate (not a cap) refused it, else 0,
--          µs until the host's next token after this call (0: one is there, or no rate),
--          refused by the tenants' rules: 0 no, 1 its tenant is at its max, 2 its tenant holds its
--          guarantee or more and waiters before it in the fair order take the free slots (or
--          the host is full), 3 the free slots are owed to waiters before it, its tenant below
--          its guarantee; {tenant, held, ...} (no tenants: empty)}
--   admitted: 1, 0 (at the limit or the rate), or -1: the marker is missing or is not the
--   epoch this worker knows, so this store lost data (restart, FLUSHALL, failover) and
--   counts held elsewhere may be missing: nothing is admitted until holders re-asserted them.
--   The cap and the rate are checked together: a refusal by either takes nothing of the other.
--
-- Cost: O(workers holding this host).
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[4])
  if ARGV[5] ~= '' then
    return {-1, 0, -1, epoch, 0, 0, 0, 0, 0, 0, {}}
  end
elseif ARGV[5] ~= '' and epoch ~= ARGV[5] then
  return {-1, 0, -1, epoch, 0, 0, 0, 0, 0, 0, {}}
end
local now, now_us = redis_clock()
-- Read everything first, write after: a key emptied by a write must not be touched again
-- in this script (during a Cluster resharding that is an error, "non local key").
-- Workers whose lease expired are left out of a count (read_count) and dropped below.
local function add_one(counts, leases, own)
  if own < 0 then
    -- first slot of this worker here (or its lease had lapsed): a fresh count and lease, and
    -- the keys their expiry. While it holds any, its refresh renews both every lease_ttl/3.
    redis.call('HSET', counts, ARGV[1], 1)
    redis.call('ZADD', leases, now + tonumber(ARGV[3]), ARGV[1])
    redis.call('PEXPIRE', counts, ARGV[4])
    redis.call('PEXPIRE', leases, ARGV[4])
  else
    redis.call('HINCRBY', counts, ARGV[1], 1)
  end
end
-- Drop workers whose lease expired (killed without a goodbye): their slots come back
-- within one lease ttl. This worker's own entry, just renewed, is not among them.
local function drop_expired(counts, leases, expired, admitted)
  local others = {}
  for _, worker in ipairs(expired) do
    if admitted == 0 or worker ~= ARGV[1] then
      others[#others + 1] = worker
    end
  end
  if #others > 0 then
    redis.call('HDEL', counts, unpack(others))
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  end
end
local total, own, expired = read_count(KEYS[1], KEYS[2], now, ARGV[1])
local limit = tonumber(ARGV[2])
-- room: slots free under the host's limit and its shared cap's (nil: no limit at all)
local room = nil
if limit > 0 then
  room = limit - total
end
local shared = ARGV[11] ~= nil and ARGV[11] ~= ''
local shared_total, shared_own, shared_expired = 0, -1, {}
if shared then
  shared_total, shared_own, shared_expired = read_count(KEYS[7], KEYS[8], now, ARGV[1])
  local free = tonumber(ARGV[11]) - shared_total
  if room == nil or free < room then
    room = free
  end
end
-- The rates (the host's, its shared cap's): how many admissions their tokens allow now
-- (GCRA; a stored TAT kept under another interval carries the tokens it owes over).
-- room becomes the smallest of the caps' and the rates'.
local cap_room = room
local rates = {}
local function read_rate(key, t, tau, part)
  if t == nil or t == '' then
    return
  end
  local rate = {key = key, interval = tonumber(t), tolerance = tonumber(tau), part = part}
  local stored = redis.call('HMGET', key, 'tat', 'interval')
  rate.tat = tonumber(stored[1] or 0)
  local old = tonumber(stored[2] or rate.interval)
  if rate.tat > now_us and old ~= rate.interval then
    rate.tat = now_us + (rate.tat - now_us) / old * rate.interval
  end
  local early = math.max(rate.tat, now_us) - rate.tolerance - now_us  -- > 0: the next token is that far
  local tokens = 0
  if early <= 0.001 then  -- 1 ns of float error in a sum of intervals is not a refusal
    tokens = math.floor((0.001 - early) / rate.interval) + 1
  end
  if room == nil or tokens < room then
    room = tokens
  end
  rates[#rates + 1] = rate
end
read_rate(KEYS[4], ARGV[12], ARGV[13])
if shared then
  read_rate(KEYS[9], ARGV[14], ARGV[15])
end
local admitted = 0
local ahead, wake_self = 0, 0
-- Tenants (ARGV[16]): each one's fleet-wide count here, read like the host's.
local tenanted = ARGV[16] ~= nil and ARGV[16] ~= '' and limit > 0
local tenants, me = {}, nil
local refused_by_tenant = 0
local last_host_key = #KEYS
if ARGV[16] ~= nil and ARGV[16] ~= '' then
  last_host_key = #KEYS - 4 * tonumber(ARGV[18])
end
if tenanted then
  tenants, me = read_tenants(17, last_host_key + 1)
  for _, t in ipairs(tenants) do
    t.held, t.own, t.expired = read_count(t.counts, t.leases, now, ARGV[1])
  end
  if me == nil then
    tenanted, tenants = false, {}
  end
end
-- KEYS[5] and KEYS[6] may be left out (a Cluster slot being migrated, see limiter.py): no queue then
local has_queue = last_host_key >= 6
local live, mine, dead = {}, nil, {}
local order = {}  -- the live waiters in the order free slots go to them
-- The head of a queue, oldest first (`window` entries): live waiters (their worker renewed its
-- waiting lease) appended to `live` as {ticket, at}, the entries of dead workers to `dead`
-- (dropped below). Returns the caller's ticket's place among the live ones before it (nil if
-- it is not there), its arrival (µs of Redis time), and how many entries were read.
local alive = {}
local function read_head(queue, window, live_out, dead_out)
  local head = redis.call('ZRANGE', queue, 0, window - 1, 'WITHSCORES')
  local at_queue, at = nil, nil
  for i = 1, #head, 2 do
    local ticket = head[i]
    local worker = ticket_worker(ticket)
    if alive[worker] == nil then
      alive[worker] = tonumber(redis.call('ZSCORE', KEYS[6], worker) or 0) > now
    end
    if ticket == ARGV[7] then
      at_queue, at = #live_out, tonumber(head[i + 1])
    elseif alive[worker] then
      live_out[#live_out + 1] = {ticket = ticket, at = tonumber(head[i + 1])}
    else
      dead_out[#dead_out + 1] = ticket
    end
  end
  return at_queue, at, #head / 2
end
if tenanted then
  -- Each tenant's queue head: its live waiters (oldest first, with their arrival).
  local my_at = now_us
  for _, t in ipairs(tenants) do
    if has_queue then
      local at_queue, at = read_head(t.queue, math.max(room, 1) + 32, t.live, t.dead)
      if at_queue ~= nil then
        mine, my_at = at_queue, at
      end
    end
  end
  -- Guarantees among the tenants that want the host (holding, waiting, or asking).
  local wanting = 0
  for _, t in ipairs(tenants) do
    t.active = t.held > 0 or #t.live > 0
    t.wants = t.active or t == me
    if t.wants then
      wanting = wanting + t.weight
    end
  end
  -- The caller's tenant's part of the host's own rate: one more token to take.
  if ARGV[12] ~= '' then
    local part_t, part_tau = tenant_rate(tenants, me, tonumber(ARGV[12]), tonumber(ARGV[13]), now_us)
    if part_t ~= nil then
      read_rate(me.rate, part_t, part_tau, true)
    end
  end
  for _, t in ipairs(tenants) do
    t.guarantee = 0
    if t.wants then
      t.guarantee = math.floor(limit * t.weight / wanting + 1e-9)
    end
    -- its k-th waiter's place: held + k - guarantee (lower first, then arrival), if it fits
    for k, entry in ipairs(t.live) do
      if t.held + k - 1 < t.ceiling then
        order[#order + 1] = {ticket = entry.ticket, place = t.held + k - 1 - t.guarantee, at = entry.at}
      end
    end
  end
  table.sort(order, function(a, b)
    if a.place ~= b.place then
      return a.place < b.place
    end
    return a.at < b.at
  end)
  local my_k = mine or #me.live
  local my_place = me.held + my_k - me.guarantee
  for _, o in ipairs(order) do
    if o.place < my_place or (o.place == my_place and o.at < my_at) then
      ahead = ahead + 1
    end
  end
  if me.held + my_k >= me.ceiling then
    refused_by_tenant = 1
    ahead = math.max(room, cap_room)
  elseif cap_room > 0 and ahead >= cap_room then
    refused_by_tenant = 3  -- free slots, but owed to waiters before it in the fair order
    if my_place >= 0 then
      refused_by_tenant = 2
    end
  elseif total >= limit and my_place >= 0 and ahead > 0 then
    refused_by_tenant = 2  -- the host is full, and waiters below their guarantee go first
  end
  for _, t in ipairs(tenants) do
    for _, ticket in ipairs(t.dead) do
      dead[#dead + 1] = ticket
    end
  end
elseif has_queue and room ~= nil and redis.call('ZCARD', KEYS[5]) > 0 then
  local window = math.max(room, 1) + 32
  local at_queue, _, read = read_head(KEYS[5], window, live, dead)
  mine, order = at_queue, live
  ahead = mine or #live
  if mine == nil and read == window then
    ahead = room  -- more waiters than the window shows: this one is not next
  end
end
local rated = #rates > 0
local queued = #order > 0 or #dead > 0 or mine ~= nil
if room == nil or ahead < room then
  admitted = 1
  add_one(KEYS[1], KEYS[2], own)
  if shared then
    add_one(KEYS[7], KEYS[8], shared_own)
  end
  if tenanted then
    add_one(me.counts, me.leases, me.own)
    me.held = me.held + 1
  end
end
local next_token = 0
for _, rate in ipairs(rates) do
  local start = math.max(rate.tat, now_us)
  if admitted == 1 then  -- a token of each rate; the hash is gone once its TAT says nothing
    local next_tat = start + rate.interval
    if not rate.part then  -- the host's next token (a tenant's part is its own affair)
      next_token = math.max(next_token, next_tat - rate.tolerance - now_us)
    end
    redis.call('HSET', rate.key, 'tat', next_tat, 'interval', rate.interval)
    redis.call('PEXPIRE', rate.key, math.ceil((next_tat - now_us) / 1000) + 1000)
  elseif not rate.part then
    next_token = math.max(next_token, start - rate.tolerance - now_us)
  end
end
drop_expired(KEYS[1], KEYS[2], expired, admitted)
if shared then
  drop_expired(KEYS[7], KEYS[8], shared_expired, admitted)
end
for _, t in ipairs(tenants) do
  drop_expired(t.counts, t.leases, t.expired, t == me and admitted or 0)
end
if has_queue and (queued or ARGV[7] ~= '') then
  local queue = KEYS[5]  -- the waiters' line: the host's, or the caller's tenant's
  if tenanted then
    queue = me.queue
    for _, t in ipairs(tenants) do
      if #t.dead > 0 then
        redis.call('ZREM', t.queue, unpack(t.dead))
      end
    end
  elseif #dead > 0 then
    redis.call('ZREM', KEYS[5], unpack(dead))
  end
  if admitted == 1 and mine ~= nil then
    redis.call('ZREM', queue, ARGV[7])
    if ARGV[10] == '1' then
      redis.call('ZREM', KEYS[6], ARGV[1])
    end
  elseif admitted == 0 and ARGV[7] ~= '' then
    if mine == nil then  -- arrival order: Redis's clock, in microseconds
      redis.call('ZADD', queue, now_us, ARGV[7])
    end
    redis.call('ZADD', KEYS[6], now + tonumber(ARGV[3]), ARGV[1])
    redis.call('PEXPIRE', queue, ARGV[4])
    redis.call('PEXPIRE', KEYS[6], ARGV[4])
  end
  -- Slots still free go to the first live waiters in order: wake their workers (one message
  -- each; with tenants the message names the tenant, and a worker is told even of its own).
  local woken = {}
  for i = 1, math.min((room or 0) - admitted, #order) do
    local ticket = order[i].ticket
    local worker = ticket_worker(ticket)
    if tenanted then
      local message = ARGV[9] .. '|' .. string.match(ticket, '|([^|]*)$')
      if not woken[message] then
        woken[message] = true
        redis.call('PUBLISH', ARGV[8] .. worker, message)
      end
    elseif worker == ARGV[1] then
      wake_self = 1
    elseif not woken[worker] then
      woken[worker] = true
      redis.call('PUBLISH', ARGV[8] .. worker, ARGV[9])
    end
  end
end
local refused_by_shared = 0
if admitted == 0 and shared and shared_total >= tonumber(ARGV[11]) and not (limit > 0 and total >= limit) then
  refused_by_shared = 1
end
local rate_wait = 0
if rated and admitted == 0 and (cap_room == nil or ahead < cap_room) then
  -- the caps had room for this caller: a rate refused it; its tokens come after those ahead
  for _, rate in ipairs(rates) do
    rate_wait = math.max(rate_wait, 1, math.max(rate.tat, now_us) + ahead * rate.interval - rate.tolerance - now_us)
  end
end
local held = {}
for _, t in ipairs(tenants) do
  held[#held + 1] = t.name
  held[#held + 1] = t.held
end
return {admitted, total + admitted, own, epoch, ahead, wake_self, refused_by_shared, rate_wait, next_token,
        refused_by_tenant, held}
