-- KEYS: meta. ARGV: kind, chaos JSON, speed, session ('' = none), retention ms, idle
-- retention ms. Returns 1 if created.
if redis.call('HEXISTS', KEYS[1], 'kind') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'chaos', ARGV[2], 'speed', ARGV[3], 'first_id', '1', 'last_id', '0', 'next_message', '0')
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'session', ARGV[4]) end
touch(KEYS[1])
return 1
