-- Remove up to ARGV[1] expired entries from the index; cost grows with what expired only.
-- The records themselves expire in Redis with the same deadline (PEXPIRE), tombstones too.
--
-- KEYS[1] index   ARGV[1] batch limit
-- Returns the number of entries removed.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZCOUNT', KEYS[1], '-inf', now_ms)
local limit = tonumber(ARGV[1])
if n > limit then
  n = limit
end
if n > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1)
end
return n
