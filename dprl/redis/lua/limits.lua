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
local op = ARGV[1]
if op == 'set' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
elseif op == 'rm' then
  redis.call('HDEL', KEYS[1], ARGV[2])
elseif op == 'default' then
  redis.call('SET', KEYS[2], ARGV[3])
elseif op == 'rmdefault' then
  redis.call('DEL', KEYS[2])
elseif op == 'setrate' then
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
elseif op == 'rmrate' then
  redis.call('HDEL', KEYS[4], ARGV[2])
elseif op == 'defaultrate' then
  redis.call('SET', KEYS[5], ARGV[3])
elseif op == 'rmdefaultrate' then
  redis.call('DEL', KEYS[5])
else
  return redis.error_reply('unknown limits operation ' .. op)
end
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4], version .. ' ' .. op .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[5])
return version
