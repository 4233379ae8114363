-- KEYS: meta. ARGV: chaos JSON. Returns 1 if the run exists.
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'chaos', ARGV[1])
return 1
