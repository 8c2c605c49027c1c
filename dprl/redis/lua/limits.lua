-- limits.lua: change the fleet's stored limits or rates, and tell every worker (one call, atomic).
--
-- KEYS[1]  hosts hash   (host key or *.pattern -> limit)
-- KEYS[2]  default      (a string: the fleet's default limit; absent = each process's own)
-- KEYS[3]  version      (a counter: one more per change)
-- KEYS[4]  rates hash   (host key or *.pattern -> rate, as written: "10/s:burst=20")
-- KEYS[5]  default rate (a string; absent = each process's own)
-- ARGV[1]  set | rm | default | rmdefault | setrate | rmrate | defaultrate | rmdefaultrate
-- ARGV[2]  the host key or pattern (set, rm, setrate, rmrate)
-- ARGV[3]  the limit (set, default; 0 = unlimited) or the rate (setrate, defaultrate)
-- ARGV[4]  the channel workers listen on
-- ARGV[5]  who made the change (for the workers' log)
-- Returns the new version. The message published is "version op key value who".
local ops = {  -- op -> {what it does, the key it does it to}
  set = {'HSET', 1}, rm = {'HDEL', 1}, default = {'SET', 2}, rmdefault = {'DEL', 2},
  setrate = {'HSET', 4}, rmrate = {'HDEL', 4}, defaultrate = {'SET', 5}, rmdefaultrate = {'DEL', 5},
}
local op = ops[ARGV[1]]
if not op then
  return redis.error_reply('unknown limits operation ' .. ARGV[1])
end
local command, key = op[1], KEYS[op[2]]
if command == 'HSET' then
  redis.call('HSET', key, ARGV[2], ARGV[3])
elseif command == 'HDEL' then
  redis.call('HDEL', key, ARGV[2])
elseif command == 'SET' then
  redis.call('SET', key, ARGV[3])
else
  redis.call('DEL', key)
end
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4], version .. ' ' .. ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[5])
return version
