-- Give every key of one thread a fresh TTL (after a write, or a read with refresh on).
--
-- KEYS[1] thread registry (hash: checkpoint namespace -> thread id)   KEYS[2] runs
-- ARGV[1] TTL in ms
-- ARGV[2..6] prefixes of the per-namespace keys (ids, cp, link, blob, write)
-- Returns the number of checkpoint namespaces touched.

local namespaces = redis.call('HKEYS', KEYS[1])
for _, ns in ipairs(namespaces) do
  for i = 2, 6 do
    redis.call('PEXPIRE', ARGV[i] .. ns, ARGV[1])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return #namespaces
