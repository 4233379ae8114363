-- KEYS: meta, log, cancel key. ARGV: envelope body, type, reply target's crid ('' = the
-- run), retention ms, idle retention ms. Returns {code, id, first_id, status}: code 0
-- appended, 1 already asked (the first id), -1 unknown run, -3 finished (the run, or the
-- reply: its status `completed` or `failed`). The checks and the append are one step, so a
-- target ending meanwhile is seen.
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return {-1, 0, 0, ''} end
local prev = redis.call('GET', KEYS[3])
if prev then return {1, tonumber(prev), 0, ''} end
if redis.call('HGET', KEYS[1], 'finished') == '1' then return {-3, 0, 0, ''} end
if ARGV[3] ~= '' then
  local r = redis.call('HGET', KEYS[1], 'reply:' .. ARGV[3])
  if r and string.sub(r, 1, 2) == 'd:' then return {-3, 0, 0, string.sub(r, 3)} end
end
local n = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
local ttl = item_ttl(KEYS[1], 0)
if ttl > 0 then
  redis.call('SET', KEYS[3], string.format('%d', n), 'PX', ttl)
else
  redis.call('SET', KEYS[3], string.format('%d', n))
end
register(KEYS[1], KEYS[3], ttl)
touch(KEYS[1])
return {0, n, tonumber(redis.call('HGET', KEYS[1], 'first_id')), ''}
