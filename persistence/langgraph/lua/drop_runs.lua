-- Delete the checkpoints (with their writes) that the given runs made in one thread, then
-- the blobs no remaining checkpoint reads, and the namespaces left empty.
--
-- KEYS[1] thread registry (hash: checkpoint namespace -> thread id)   KEYS[2] runs
-- ARGV[1..5] prefixes of the per-namespace keys (ids, cp, link, blob, write)
-- ARGV[6..] run ids
-- Returns the number of checkpoints deleted.

local function netstrings(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local colon = string.find(s, ':', i, true)
    local len = tonumber(string.sub(s, i, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + len)
    i = colon + len + 1
  end
  return out
end

local function ns(s)
  return string.len(s) .. ':' .. s
end

-- Blobs no remaining checkpoint of namespace c reads; the namespace itself once empty.
local function collect(c)
  if redis.call('ZCARD', ARGV[1] .. c) == 0 then
    redis.call('UNLINK', ARGV[1] .. c, ARGV[2] .. c, ARGV[3] .. c, ARGV[4] .. c, ARGV[5] .. c)
    redis.call('HDEL', KEYS[1], c)
    return
  end
  local live = {}
  for _, link in ipairs(redis.call('HVALS', ARGV[3] .. c)) do
    local parts = netstrings(link)
    for i = 3, #parts do
      live[parts[i]] = true
    end
  end
  for _, field in ipairs(redis.call('HKEYS', ARGV[4] .. c)) do
    if not live[field] then
      redis.call('HDEL', ARGV[4] .. c, field)
    end
  end
end

local deleted, touched = 0, {}
for i = 6, #ARGV do
  local run = ns(ARGV[i])
  local members = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. run, '(' .. run .. '\255')
  for _, member in ipairs(members) do
    local after_run = #run + 1
    local colon = string.find(member, ':', after_run, true)
    local len = tonumber(string.sub(member, after_run, colon - 1))
    local c = string.sub(member, colon + 1, colon + len)
    local id = string.sub(member, colon + len + 1)
    if redis.call('ZREM', ARGV[1] .. c, id) == 1 then
      deleted = deleted + 1
    end
    redis.call('HDEL', ARGV[2] .. c, id)
    redis.call('HDEL', ARGV[3] .. c, id)
    redis.call('ZREMRANGEBYLEX', ARGV[5] .. c, '[' .. ns(id), '(' .. ns(id) .. '\255')
    touched[c] = true
  end
  if #members > 0 then
    redis.call('ZREMRANGEBYLEX', KEYS[2], '[' .. run, '(' .. run .. '\255')
  end
end
for c in pairs(touched) do
  collect(c)
end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('UNLINK', KEYS[1], KEYS[2])
end
return deleted
