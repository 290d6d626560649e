-- LangGraph's delta-channel history of one checkpoint (get_delta_channel_history): walk the
-- parent chain from the target's parent; for each requested channel collect the writes of each
-- ancestor until the nearest ancestor that stores a value for it (the seed; its own writes
-- are collected too). The target's own writes are pending, not history.
--
-- KEYS[1] ids (sorted set)   KEYS[2] link (hash)   KEYS[3] blob (hash)   KEYS[4] write (zset)
-- ARGV[1] target checkpoint id ('' for the newest)   ARGV[2..] channel names
-- Returns {walked checkpoint ids (newest first), then per channel in ARGV order:
--          seed blob value or false, {write members (walk order)}}

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

local function first(s, from)
  local colon = string.find(s, ':', from, true)
  return string.sub(s, colon + 1, colon + tonumber(string.sub(s, from, colon - 1)))
end

-- offset just after the netstring at `from`
local function skip(s, from)
  local colon = string.find(s, ':', from, true)
  return colon + tonumber(string.sub(s, from, colon - 1)) + 1
end

local target = ARGV[1]
if target == '' then
  local newest = redis.call('ZREVRANGEBYLEX', KEYS[1], '+', '-', 'LIMIT', 0, 1)
  target = newest[1] or ''
end
local remaining, pending = {}, 0
local seeds, writes = {}, {}
for i = 2, #ARGV do
  if not remaining[ARGV[i]] then
    remaining[ARGV[i]] = true
    pending = pending + 1
    writes[ARGV[i]] = {}
  end
end
local walked = {}
local link = target ~= '' and redis.call('HGET', KEYS[2], target)
local cursor = link and netstrings(link)[1] or ''
while pending > 0 and cursor ~= '' do
  link = redis.call('HGET', KEYS[2], cursor)
  if not link then
    break
  end
  walked[#walked + 1] = cursor
  local prefix = string.len(cursor) .. ':' .. cursor
  for _, member in ipairs(redis.call('ZRANGEBYLEX', KEYS[4], '[' .. prefix, '(' .. prefix .. '\255')) do
    local bar = skip(member, skip(member, #prefix + 1))  -- past task id and idx: the '|'
    local ch = first(member, bar + 1)
    if remaining[ch] then
      local list = writes[ch]
      list[#list + 1] = member
    end
  end
  local parts = netstrings(link)
  for k = 3, #parts do
    local ch = first(parts[k], 1)
    if remaining[ch] then
      local value = redis.call('HGET', KEYS[3], parts[k])
      if value and #value > 0 then
        seeds[ch] = value
        remaining[ch] = nil
        pending = pending - 1
      end
    end
  end
  cursor = parts[1]
end
local out = {walked}
for i = 2, #ARGV do
  out[#out + 1] = seeds[ARGV[i]] or false
  out[#out + 1] = writes[ARGV[i]]
end
return out
