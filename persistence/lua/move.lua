-- Move one thread from the single-index layout into the sharded one, during a migration
-- (one server only: the keys of both layouts are in unrelated slots). Atomic: afterwards the
-- thread is in one layout only. The record is RENAMEd (value, type and TTL kept; the payload
-- never passes through Lua) unless the sharded layout already holds it at the same or a
-- newer version: then the old copy is dropped. A record listed in the old index keeps its
-- score (expiry); one listed in the Rust crate's set only gets one from its TTL; a
-- tombstone, or a record listed nowhere, stays unlisted (listings show what they showed).
--
-- KEYS[1] old record   KEYS[2] old index (sorted set)   KEYS[3] the Rust crate's set
-- KEYS[4] new record   KEYS[5] new index of the thread's shard   KEYS[6] layout key
-- ARGV[1] thread id   ARGV[2] the layout value of the migration ('migrating:<S>')
-- Returns {code, kind}: code 0 moved, 1 dropped (the new layout held it at the same or a
-- newer version), 2 nothing to move (its index or set entries dropped), -1 the layout is
-- not ARGV[2] (nothing done). kind: 'r' record, 't' tombstone, 'j' plain JSON (the Rust
-- crate's), 'x' neither (unreadable: moved as it is), 'w' a Redis value of another type
-- (moved as it is), 'e' an index or set entry without a record (expired), '' nothing.

if redis.call('GET', KEYS[6]) ~= ARGV[2] then
  return {-1, ''}
end
local id = ARGV[1]
local score = redis.call('ZSCORE', KEYS[2], id)
local listed = score or redis.call('SISMEMBER', KEYS[3], id) == 1

local function version_of(key)
  -- the version in our header, or '' if the value is not a record of ours
  local head = redis.call('GETRANGE', key, 0, 23)
  if #head == 24 and string.sub(head, 1, 3) == 'AP1' and string.find(head, '^%d+$', 5)
      and string.sub(head, 5, 24) <= '09223372036854775807' then
    return string.sub(head, 5, 24), string.sub(head, 4, 4)
  end
  return '', string.sub(head, 1, 24)
end

local kind_type = redis.call('TYPE', KEYS[1])['ok']
if kind_type == 'none' then
  redis.call('ZREM', KEYS[2], id)
  redis.call('SREM', KEYS[3], id)
  if listed then
    return {2, 'e'}
  end
  return {2, ''}
end
local version, kind = '00000000000000000000', 'w'
if kind_type == 'string' then
  local v, k = version_of(KEYS[1])
  if v ~= '' then
    version = v
    if k == 't' then kind = 't' else kind = 'r' end
  elseif string.find(k, '^%s*{') then
    kind = 'j'
  else
    kind = 'x'
  end
end

local new_type = redis.call('TYPE', KEYS[4])['ok']
if new_type ~= 'none' then
  local held = '00000000000000000000'
  if new_type == 'string' then
    local v = version_of(KEYS[4])
    if v ~= '' then held = v end
  end
  if held >= version then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], id)
    redis.call('SREM', KEYS[3], id)
    return {1, kind}
  end
end

local pttl = redis.call('PTTL', KEYS[1])
redis.call('RENAME', KEYS[1], KEYS[4])
redis.call('ZREM', KEYS[2], id)
redis.call('SREM', KEYS[3], id)
if kind == 't' or not listed then
  redis.call('ZREM', KEYS[5], id)
else
  if not score then
    if pttl > 0 then
      local t = redis.call('TIME')
      score = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + pttl
    else
      score = '+inf'
    end
  end
  redis.call('ZADD', KEYS[5], score, id)
end
return {0, kind}
