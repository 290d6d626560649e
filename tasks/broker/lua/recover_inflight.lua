-- Give messages that a dead consumer took from a queue back to that queue.
--
-- A consumer moves each message from its queue to an in-flight list of its own (BLMOVE)
-- and removes it from there once it is recorded as unacknowledged. While it lives it keeps
-- '<in-flight list>:alive' set; once that key has expired, whatever its list still holds
-- was taken but never recorded, and goes back to the queue it came from (served next).
--
-- KEYS[1] registry (hash: in-flight list -> queue list)
-- Returns the number of messages given back.

local registry = KEYS[1]
local entries = redis.call('HGETALL', registry)
local restored = 0
for i = 1, #entries, 2 do
  local inflight, queue = entries[i], entries[i + 1]
  if redis.call('EXISTS', inflight .. ':alive') == 0 then
    local items = redis.call('LRANGE', inflight, 0, -1)
    -- The list's right end holds the oldest; RPUSH from the newest keeps them in order
    -- at the queue's right end, where the next pop takes them.
    for j = 1, #items do
      redis.call('RPUSH', queue, items[j])
    end
    restored = restored + #items
    redis.call('DEL', inflight)
    redis.call('HDEL', registry, inflight)
  end
end
return restored
