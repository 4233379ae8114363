-- KEYS: meta. Returns the run's next message counter (`msg_<n>`), or -1 for an unknown run:
-- a run that has expired is not re-created (without a TTL) by the counter.
if redis.call('HEXISTS', KEYS[1], 'kind') == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'next_message', 1)
