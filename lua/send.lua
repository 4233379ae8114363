-- KEYS: meta, log, send key, unqueued (all in the session's slot). ARGV: body head (up
-- to the message id), body tail, TTL s, session, client_request_id, content, retention ms,
-- idle retention ms.
-- Returns {fresh, message_id, id, first_id, unqueued, content}: a fresh send is logged and
-- recorded in `unqueued` (the caller then adds it to the global queue, in its own slot, and
-- clears the record); a repeat whose queue step never completed answers unqueued = 1 with the
-- content first accepted, so the caller queues it now.
local prev = redis.call('GET', KEYS[3])
if prev then
  local pending = redis.call('HGET', KEYS[4], ARGV[5])
  if pending then return {0, prev, 0, 0, 1, pending} end
  return {0, prev, 0, 0, 0, ''}
end
if redis.call('HGET', KEYS[1], 'finished') == '1' then return {-3, '', 0, 0, 0, ''} end
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then
  redis.call('HSET', KEYS[1], 'kind', 'chat', 'chaos', '{}', 'speed', '1', 'first_id', '1', 'last_id', '0', 'next_message', '0', 'session', ARGV[4])
end
local mid = 'msg_' .. string.format('%d', redis.call('HINCRBY', KEYS[1], 'next_message', 1))
local ttl = item_ttl(KEYS[1], tonumber(ARGV[3]) * 1000)
redis.call('SET', KEYS[3], mid, 'NX', 'PX', ttl)
register(KEYS[1], KEYS[3], ttl)
-- The claim a queue consumer makes later (`SET NX EX` the send TTL, outside a script).
register(KEYS[1], run_prefix(KEYS[1]) .. 'claimed:' .. ARGV[5], 2 * tonumber(ARGV[3]) * 1000)
local n = append(KEYS[1], KEYS[2], ARGV[1] .. mid .. ARGV[2], 'message.created')
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
redis.call('PEXPIRE', KEYS[4], ttl)
register(KEYS[1], KEYS[4], ttl)
touch(KEYS[1])
return {1, mid, n, tonumber(redis.call('HGET', KEYS[1], 'first_id')), 1, ''}
