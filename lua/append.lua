-- KEYS: meta, log. ARGV: envelope body (without `{` and `event_id`), type, retention ms,
-- idle retention ms. Returns {id, first_id}, or {-1, 0} for an unknown run, {-4, 0} refused:
-- a second reply to a send, or more of a reply that ended (append_step.lua).
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return {-1, 0} end
if reply_refused(KEYS[1], nil, ARGV[1], ARGV[2]) then return {-4, 0} end
local n = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
touch(KEYS[1])
return {n, tonumber(redis.call('HGET', KEYS[1], 'first_id'))}
