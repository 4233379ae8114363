-- The end of an orphaned reply: a send taken over from a consumer that stopped (its claim
-- idle time passed without a heartbeat, `XAUTOCLAIM`) whose reply had started ends that
-- reply `message.failed`, checked and appended in this one step, so two takers append one
-- ending and none comes after the reply's own (docs/GATEWAY.md "Sends after a crash").
-- KEYS: meta, log. ARGV: the send's client_request_id, envelope body up to its payload
-- (without `{` and `event_id`, ending `"payload":`), retention ms, idle retention ms.
-- Returns {code, message_id, id, first_id}: code 0 no reply started (the taker answers the
-- send), 1 ended here (`message.failed` appended as `id`), 2 nothing to do (the reply
-- ended already, or the run is unknown or finished): the send is answered.
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return {2, '', 0, 0} end
local r = redis.call('HGET', KEYS[1], 'reply:' .. ARGV[1])
if not r then return {0, '', 0, 0} end
local mid = string.sub(r, 3)
if string.sub(r, 1, 2) ~= 's:' or redis.call('HGET', KEYS[1], 'finished') == '1' then
  return {2, mid, 0, 0}
end
local err = 'the process answering this message stopped before finishing it'
local n = append(KEYS[1], KEYS[2], ARGV[2] .. '{"message_id":' .. cjson.encode(mid) .. ',"error":"' .. err .. '"}}', 'message.failed')
touch(KEYS[1])
return {1, mid, n, tonumber(redis.call('HGET', KEYS[1], 'first_id'))}
