-- Retention (docs/REDIS.md "Retention"), shared by every script that writes a run's keys.
-- Such a script passes, as its LAST two ARGV, the retention of a finished run and the
-- idle retention of an unfinished one, in ms ('0' = keep forever). Every write sets the
-- run's fixed keys to the TTL the run's state gives; per-item keys (cancel, idem, send,
-- claimed, unqueued) get their own TTL capped by the run's and are listed in the registry
-- `runstream:{<run>}:keys` (scored by when each expires by itself), so the append of
-- `run.completed` caps them all at the retention in the same script.
local RETAIN_MS = tonumber(ARGV[#ARGV - 1])
local IDLE_MS = tonumber(ARGV[#ARGV])
-- `runstream:{<run>}:`, from the run's meta key.
local function run_prefix(meta) return string.sub(meta, 1, -5) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The TTL (ms, 0 = none) of the run's keys now: the retention once finished, else the idle one.
local function run_ttl(meta)
  if redis.call('HGET', meta, 'finished') == '1' then return RETAIN_MS end
  return IDLE_MS
end
-- The TTL (ms, 0 = none) of a per-item key written now: its own `ms`, capped by the run's.
local function item_ttl(meta, ms)
  local cap = run_ttl(meta)
  if cap > 0 and (ms == 0 or ms > cap) then return cap end
  return ms
end
-- Lists a per-item key living `ms` (0 = until the run's keys go) in the registry; entries
-- of keys expired by now go on the way, so the registry holds only keys alive.
local function register(meta, key, ms)
  local reg = run_prefix(meta) .. 'keys'
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', reg, '-inf', '(' .. now)
  local score = '+inf'
  if ms > 0 then score = now + ms end
  redis.call('ZADD', reg, score, key)
end
-- The finish: every listed key alive gets at most the retention.
local function cap_items(meta)
  if RETAIN_MS == 0 then return end
  local reg = run_prefix(meta) .. 'keys'
  redis.call('ZREMRANGEBYSCORE', reg, '-inf', '(' .. now_ms())
  for _, k in ipairs(redis.call('ZRANGE', reg, 0, -1)) do
    local t = redis.call('PTTL', k)
    if t == -1 or t > RETAIN_MS then redis.call('PEXPIRE', k, RETAIN_MS) end
  end
end
-- After a write: the run's fixed keys get the run's TTL (a refresh while it is unfinished).
local FIXED = {'meta', 'log', 'base', 'keys', 'cancel:run'}
local function touch(meta)
  local ms = run_ttl(meta)
  local p = run_prefix(meta)
  for _, s in ipairs(FIXED) do
    if ms > 0 then redis.call('PEXPIRE', p .. s, ms) else redis.call('PERSIST', p .. s) end
  end
end
