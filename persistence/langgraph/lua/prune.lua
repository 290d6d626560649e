-- Keep-latest prune of one thread, safe for LangGraph's delta channels.
--
-- For each checkpoint namespace named in ARGV, the given head is kept, and so is every
-- ancestor on its parent chain up to (and including) the nearest one that holds a stored value
-- for each of the head's delta channels that the head itself stores no value for: LangGraph
-- rebuilds such a channel from that value and the writes of the ancestors after it. Every
-- other checkpoint older than the head goes, with its writes; then the blobs no remaining
-- checkpoint reads. Checkpoints newer than the head (written since it was read) stay.
--
-- KEYS[1] thread registry (hash: checkpoint namespace -> thread id)   KEYS[2] runs
-- ARGV[1..5] prefixes of the per-namespace keys (ids, cp, link, blob, write)
-- ARGV[6..] groups: namespace, head id, n, then n delta channel names
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

local function channel_of(field)
  local colon = string.find(field, ':', 1, true)
  return string.sub(field, colon + 1, colon + tonumber(string.sub(field, 1, colon - 1)))
end

local function collect(c)
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

local deleted = 0
local i = 6
while i <= #ARGV do
  local c, head, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local keep, remaining, pending = {[head] = true}, {}, 0
  local head_link = redis.call('HGET', ARGV[3] .. c, head)
  if head_link then
    local delta = {}
    for j = 1, n do
      delta[ARGV[i + 2 + j]] = true
    end
    -- only delta channels the head reads (has a version of) can need ancestors
    local parts = netstrings(head_link)
    for k = 3, #parts do
      local ch = channel_of(parts[k])
      if delta[ch] and not remaining[ch] then
        remaining[ch] = true
        pending = pending + 1
      end
    end
    local cursor = head
    local link = head_link
    while pending > 0 and link do
      parts = netstrings(link)
      for k = 3, #parts do
        local ch = channel_of(parts[k])
        if remaining[ch] and redis.call('HSTRLEN', ARGV[4] .. c, parts[k]) > 0 then
          remaining[ch] = nil
          pending = pending - 1
        end
      end
      if pending == 0 or parts[1] == '' then
        break
      end
      cursor = parts[1]
      keep[cursor] = true
      link = redis.call('HGET', ARGV[3] .. c, cursor)
    end
    for _, id in ipairs(redis.call('ZRANGEBYLEX', ARGV[1] .. c, '-', '(' .. head)) do
      if not keep[id] then
        local old = redis.call('HGET', ARGV[3] .. c, id)
        if old then
          local run = netstrings(old)[2]
          if run and run ~= '' then
            redis.call('ZREM', KEYS[2], ns(run) .. ns(c) .. id)
          end
        end
        redis.call('ZREM', ARGV[1] .. c, id)
        redis.call('HDEL', ARGV[2] .. c, id)
        redis.call('HDEL', ARGV[3] .. c, id)
        redis.call('ZREMRANGEBYLEX', ARGV[5] .. c, '[' .. ns(id), '(' .. ns(id) .. '\255')
        deleted = deleted + 1
      end
    end
    collect(c)
  end
  i = i + 3 + n
end
return deleted
