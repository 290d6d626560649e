-- Versioned compare-and-set of one thread's record (see persistence/codec.py for the layout).
-- Large records: runs inside the same MULTI/EXEC as the SET that put the new record on the
-- staging key, so the payload never passes through Lua: the record is RENAMEd into place.
-- Small records come as ARGV[4] instead (one command, no staging key, no MULTI/EXEC): for
-- them the Lua argument copy costs less than the extra commands.
--
-- KEYS[1] record key   KEYS[2] staging key   KEYS[3] index (sorted set)
-- KEYS[4] the namespace's layout key (optional; given by stores of the single-index layout,
--         which must not write once a migration has begun: LAYOUTMOVED, nothing written)
-- ARGV[1] new version (20 digits)   ARGV[2] TTL in ms, or '' for none   ARGV[3] thread id
-- ARGV[4] the record itself (optional; absent: the record is on the staging key)
-- Returns {outcome, version held afterwards}: 0 written, 1 duplicate, 2 stale.

if KEYS[4] then
  local layout = redis.call('GET', KEYS[4])
  if layout and layout ~= 'single' then
    if not ARGV[4] then
      redis.call('DEL', KEYS[2])
    end
    return redis.error_reply('LAYOUTMOVED the namespace left the single-index layout')
  end
end
local head = redis.call('GETRANGE', KEYS[1], 0, 23)
if string.find(head, '^AP[2-9]') then
  -- written by a newer envelope schema (a newer library, mid rolling upgrade): never replace
  if not ARGV[4] then
    redis.call('DEL', KEYS[2])
  end
  return redis.error_reply('NEWERSCHEMA record written by a newer envelope schema')
end
local current = '00000000000000000000'
-- Only a header with 20 digits, at most 2^63-1, is ours; anything else reads as version 0
-- (replaceable): a larger version would make every later save stale.
if #head == 24 and string.sub(head, 1, 3) == 'AP1' and string.find(head, '^%d+$', 5)
    and string.sub(head, 5, 24) <= '09223372036854775807' then
  current = string.sub(head, 5, 24)
end
local version = ARGV[1]
local inline = ARGV[4]
if version <= current then
  if not inline then
    redis.call('DEL', KEYS[2])
  end
  if version == current then
    return {1, current}
  end
  return {2, current}
end
if inline then
  redis.call('SET', KEYS[1], inline)
else
  redis.call('RENAME', KEYS[2], KEYS[1])
end
if ARGV[2] ~= '' then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[2]), ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
  redis.call('ZADD', KEYS[3], '+inf', ARGV[3])
end
return {0, version}
