-- The append step shared by the scripts: dense id, XADD with that id, finished flag (and,
-- on `run.completed`, the run's per-item keys capped at the retention: retention.lua),
-- and each reply's state in meta (PROTOCOL §5, §8), so scripts check it atomically:
-- `reply:<crid>` = `s:<message_id>` while the reply to send <crid> streams, then `d:completed`
-- or `d:failed`; `replyof:<message_id>` = <crid>, kept once it ended. Two fields per reply.
-- A reply that ended takes no more events (`reply_ended`): a producer that stalled while its
-- send was taken over and its reply ended `message.failed` (orphan.lua) is refused when it
-- comes back, so the failed message never turns `completed` or grows (docs/GATEWAY.md).
local function reply_of(body, ty)
  if ty ~= 'message.created' and ty ~= 'message.delta' and ty ~= 'message.completed' and ty ~= 'message.failed' then return nil end
  local ok, e = pcall(cjson.decode, '{' .. body)
  if not ok or type(e) ~= 'table' or type(e.payload) ~= 'table' then return nil end
  return e.payload
end
-- A meta field as a check sees it: `ov` first (the fields a batch's earlier events would
-- write: reply_writes; nil for a single append), then what is stored (false: absent).
local function meta_get(meta, ov, f)
  if ov ~= nil and ov[f] ~= nil then return ov[f] end
  return redis.call('HGET', meta, f)
end
-- Whether an append of (body, ty) would start a second reply to one send: refused.
local function reply_taken(meta, ov, body, ty)
  if ty ~= 'message.created' then return false end
  local p = reply_of(body, ty)
  if p == nil or type(p.reply_to) ~= 'string' then return false end
  return meta_get(meta, ov, 'reply:' .. p.reply_to) ~= false
end
-- Whether (body, ty) is a delta or an ending of a reply that already ended: refused.
local function reply_ended(meta, ov, body, ty)
  if ty ~= 'message.delta' and ty ~= 'message.completed' and ty ~= 'message.failed' then return false end
  local p = reply_of(body, ty)
  if p == nil or type(p.message_id) ~= 'string' then return false end
  local r = meta_get(meta, ov, 'replyof:' .. p.message_id)
  if not r then return false end
  local st = meta_get(meta, ov, 'reply:' .. r)
  return st ~= false and string.sub(st, 1, 2) == 'd:'
end
-- Either refusal: a second reply to a send, or more of a reply that ended.
local function reply_refused(meta, ov, body, ty)
  return reply_taken(meta, ov, body, ty) or reply_ended(meta, ov, body, ty)
end
-- The meta fields an append of (body, ty) writes, {field, value, ...}: the one formula
-- `append` writes and a batch's checks overlay (append_batch.lua).
local function reply_writes(meta, ov, body, ty)
  if ty == 'message.delta' then return {} end
  local p = reply_of(body, ty)
  if p == nil or type(p.message_id) ~= 'string' then return {} end
  if ty == 'message.created' then
    if type(p.reply_to) ~= 'string' then return {} end
    return {'reply:' .. p.reply_to, 's:' .. p.message_id, 'replyof:' .. p.message_id, p.reply_to}
  end
  local r = meta_get(meta, ov, 'replyof:' .. p.message_id)
  if not r then return {} end
  return {'reply:' .. r, (ty == 'message.completed') and 'd:completed' or 'd:failed'}
end
local function append(meta, log, body, ty)
  local n = redis.call('HINCRBY', meta, 'last_id', 1)
  local id = string.format('%d', n)
  redis.call('XADD', log, '0-' .. id, 'e', '{"event_id":' .. id .. ',' .. body, 't', ty)
  if ty == 'run.completed' then
    redis.call('HSET', meta, 'finished', '1')
    cap_items(meta)
  end
  local w = reply_writes(meta, nil, body, ty)
  if #w > 0 then redis.call('HSET', meta, unpack(w)) end
  return n
end
