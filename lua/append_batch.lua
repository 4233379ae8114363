-- KEYS: meta, log, idempotency key. ARGV: digest ('' = no key), TTL s, n, then n pairs
-- (envelope body without `{` and `event_id`, type), then retention ms, idle retention ms.
-- Returns {code, first, last, first_id}: code 0 appended, 1 repeated,
-- -1 unknown run, -2 key conflict, -3 finished, -4 a reply refused (a
-- `message.created` names a `reply_to` that already has one, or an event of a reply that
-- ended: append_step.lua; also within the batch: an event is checked against what the
-- batch's earlier events would write). All or nothing: the checks come before the first
-- append, and a script runs alone.
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return {-1, 0, 0, 0} end
if ARGV[1] ~= '' then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local d, a, b = string.match(prev, '^(%x+):(%d+):(%d+)$')
    if d == ARGV[1] then return {1, tonumber(a), tonumber(b), 0} end
    return {-2, 0, 0, 0}
  end
end
if redis.call('HGET', KEYS[1], 'finished') == '1' then return {-3, 0, 0, 0} end
-- Each event is checked as the batch's earlier events would leave meta: `ov` holds the
-- fields they would write (reply_writes), so two replies to one send, or more of a reply
-- after its ending, are refused inside one batch too. Bounded: two fields per event.
local ov = {}
for i = 0, tonumber(ARGV[3]) - 1 do
  local body, ty = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if reply_refused(KEYS[1], ov, body, ty) then return {-4, 0, 0, 0} end
  local w = reply_writes(KEYS[1], ov, body, ty)
  for j = 1, #w, 2 do ov[w[j]] = w[j + 1] end
end
local first = tonumber(redis.call('HGET', KEYS[1], 'last_id')) + 1
local last = first - 1
for i = 0, tonumber(ARGV[3]) - 1 do
  last = append(KEYS[1], KEYS[2], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
if ARGV[1] ~= '' then
  local ttl = item_ttl(KEYS[1], tonumber(ARGV[2]) * 1000)
  redis.call('SET', KEYS[3], ARGV[1] .. ':' .. string.format('%d', first) .. ':' .. string.format('%d', last), 'PX', ttl)
  register(KEYS[1], KEYS[3], ttl)
end
touch(KEYS[1])
return {0, first, last, tonumber(redis.call('HGET', KEYS[1], 'first_id'))}
