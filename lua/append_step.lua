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
-- Whether an append of (body, ty) would start a second reply to one send: refused.
local function reply_taken(meta, body, ty)
  if ty ~= 'message.created' then return false end
  local p = reply_of(body, ty)
  if p == nil or type(p.reply_to) ~= 'string' then return false end
  return redis.call('HEXISTS', meta, 'reply:' .. p.reply_to) == 1
end
-- Whether (body, ty) is a delta or an ending of a reply that already ended: refused.
local function reply_ended(meta, body, ty)
  if ty ~= 'message.delta' and ty ~= 'message.completed' and ty ~= 'message.failed' then return false end
  local p = reply_of(body, ty)
  if p == nil or type(p.message_id) ~= 'string' then return false end
  local r = redis.call('HGET', meta, 'replyof:' .. p.message_id)
  if not r then return false end
  local st = redis.call('HGET', meta, 'reply:' .. r)
  return st ~= false and string.sub(st, 1, 2) == 'd:'
end
-- Either refusal: a second reply to a send, or more of a reply that ended.
local function reply_refused(meta, body, ty)
  return reply_taken(meta, body, ty) or reply_ended(meta, body, ty)
end
local function append(meta, log, body, ty)
  local n = redis.call('HINCRBY', meta, 'last_id', 1)
  local id = string.format('%d', n)
  redis.call('XADD', log, '0-' .. id, 'e', '{"event_id":' .. id .. ',' .. body, 't', ty)
  if ty == 'run.completed' then
    redis.call('HSET', meta, 'finished', '1')
    cap_items(meta)
  end
  local p = nil
  if ty ~= 'message.delta' then p = reply_of(body, ty) end
  if p ~= nil and type(p.message_id) == 'string' then
    if ty == 'message.created' then
      if type(p.reply_to) == 'string' then
        redis.call('HSET', meta, 'reply:' .. p.reply_to, 's:' .. p.message_id, 'replyof:' .. p.message_id, p.reply_to)
      end
    else
      local r = redis.call('HGET', meta, 'replyof:' .. p.message_id)
      if r then
        redis.call('HSET', meta, 'reply:' .. r, (ty == 'message.completed') and 'd:completed' or 'd:failed')
      end
    end
  end
  return n
end
