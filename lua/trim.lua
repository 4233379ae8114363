-- KEYS: meta, log, base. ARGV: expected first_id, new first_id, base JSON.
-- Commits a trim only if nobody trimmed meanwhile. The base gets the meta's TTL.
if redis.call('HGET', KEYS[1], 'first_id') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3], ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
redis.call('HSET', KEYS[1], 'first_id', ARGV[2])
redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. ARGV[2])
return 1
