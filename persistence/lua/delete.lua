-- Delete a thread by writing a tombstone at a version, so no older save can bring it back.
--
-- KEYS[1] record key   KEYS[2] index
-- KEYS[3] the namespace's layout key (optional; see save.lua: LAYOUTMOVED, nothing written)
-- ARGV[1] version (20 digits), or '' for "the newer of ARGV[4] and what is stored"
-- ARGV[2] tombstone lifetime in ms   ARGV[3] thread id   ARGV[4] caller's clock version
-- Returns {outcome, version held afterwards}: 0 deleted, 1 already deleted, 2 stale
-- (a newer save is stored; it stays).

if KEYS[3] then
  local layout = redis.call('GET', KEYS[3])
  if layout and layout ~= 'single' then
    return redis.error_reply('LAYOUTMOVED the namespace left the single-index layout')
  end
end
local head = redis.call('GETRANGE', KEYS[1], 0, 23)
if string.find(head, '^AP[2-9]') then
  -- written by a newer envelope schema (a newer library, mid rolling upgrade): never replace
  return redis.error_reply('NEWERSCHEMA record written by a newer envelope schema')
end
local current = '00000000000000000000'
local kind = ''
-- Only a header with 20 digits, at most 2^63-1, is ours; anything else reads as version 0
-- (replaceable): a larger version would make every later save stale.
if #head == 24 and string.sub(head, 1, 3) == 'AP1' and string.find(head, '^%d+$', 5)
    and string.sub(head, 5, 24) <= '09223372036854775807' then
  current = string.sub(head, 5, 24)
  kind = string.sub(head, 4, 4)
end
local version = ARGV[1]
if version == '' then
  version = ARGV[4]
  if current > version then
    version = current
  end
elseif version < current then
  return {2, current}
end
if version == current and kind == 't' then
  return {1, current}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], 'AP1t' .. version .. string.format('%016d', now_ms), 'PX', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return {0, version}
