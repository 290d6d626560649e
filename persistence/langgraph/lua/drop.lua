-- Delete every key of one thread: all its checkpoint namespaces, blobs and writes.
--
-- KEYS[1] thread registry (hash: checkpoint namespace -> thread id)   KEYS[2] runs
-- ARGV[1..5] prefixes of the per-namespace keys (ids, cp, link, blob, write)
-- Returns the ids of the runs that wrote to the thread (so their run sets can forget it).

local namespaces = redis.call('HKEYS', KEYS[1])
for _, ns in ipairs(namespaces) do
  redis.call('UNLINK', ARGV[1] .. ns, ARGV[2] .. ns, ARGV[3] .. ns, ARGV[4] .. ns, ARGV[5] .. ns)
end
local runs, seen = {}, {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local colon = string.find(member, ':', 1, true)
  local run = string.sub(member, colon + 1, colon + tonumber(string.sub(member, 1, colon - 1)))
  if not seen[run] then
    seen[run] = true
    runs[#runs + 1] = run
  end
end
redis.call('UNLINK', KEYS[1], KEYS[2])
return runs
