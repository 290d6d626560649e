-- Load checkpoints of one (thread, checkpoint namespace) with their values and writes.
-- Key layout: persistence/langgraph/keys.py; byte layouts: persistence/langgraph/records.py.
--
-- KEYS[1] ids (sorted set)   KEYS[2] cp (hash)   KEYS[3] link (hash)   KEYS[4] blob (hash)
-- KEYS[5] write (sorted set)
-- ARGV    checkpoint ids to load; a single '' loads the newest one
-- Returns one entry per checkpoint found, in ARGV order (missing ids are left out):
--   {id, record, link, {blob field, blob value, ...}, {write member, ...}}

local function netstrings(s, from)
  local out, i, n = {}, from or 1, #s
  while i <= n do
    local colon = string.find(s, ':', i, true)
    local len = tonumber(string.sub(s, i, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + len)
    i = colon + len + 1
  end
  return out
end

local ids = ARGV
if #ARGV == 1 and ARGV[1] == '' then
  ids = redis.call('ZREVRANGEBYLEX', KEYS[1], '+', '-', 'LIMIT', 0, 1)
end
local out = {}
for _, id in ipairs(ids) do
  local record = redis.call('HGET', KEYS[2], id)
  if record then
    local link = redis.call('HGET', KEYS[3], id) or ''
    local parts = netstrings(link)
    local fields = {}
    for i = 3, #parts do
      fields[#fields + 1] = parts[i]
    end
    local blobs = {}
    if #fields > 0 then
      local values = redis.call('HMGET', KEYS[4], unpack(fields))
      for i, field in ipairs(fields) do
        if values[i] then
          blobs[#blobs + 1] = field
          blobs[#blobs + 1] = values[i]
        end
      end
    end
    local prefix = string.len(id) .. ':' .. id
    local writes = redis.call('ZRANGEBYLEX', KEYS[5], '[' .. prefix, '(' .. prefix .. '\255')
    out[#out + 1] = {id, record, link, blobs, writes}
  end
end
return out
