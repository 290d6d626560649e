-- The newest checkpoint of each checkpoint namespace of one thread.
--
-- KEYS[1] thread registry (hash: checkpoint namespace -> thread id)
-- ARGV[1] prefix of the ids keys   ARGV[2] prefix of the cp keys
-- Returns {namespace, checkpoint id, record, ...} (namespaces without checkpoints left out).

local out = {}
for _, c in ipairs(redis.call('HKEYS', KEYS[1])) do
  local newest = redis.call('ZREVRANGEBYLEX', ARGV[1] .. c, '+', '-', 'LIMIT', 0, 1)
  if #newest > 0 then
    local record = redis.call('HGET', ARGV[2] .. c, newest[1])
    if record then
      out[#out + 1] = c
      out[#out + 1] = newest[1]
      out[#out + 1] = record
    end
  end
end
return out
