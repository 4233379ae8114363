-- The append step shared by the scripts: dense id, XADD with that id, finished flag (and,
-- on `run.completed`, the run's per-item keys capped at the retention: retention.lua).
local function append(meta, log, body, ty)
  local n = redis.call('HINCRBY', meta, 'last_id', 1)
  local id = string.format('%d', n)
  redis.call('XADD', log, '0-' .. id, 'e', '{"event_id":' .. id .. ',' .. body, 't', ty)
  if ty == 'run.completed' then
    redis.call('HSET', meta, 'finished', '1')
    cap_items(meta)
  end
  return n
end
