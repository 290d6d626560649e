-- Store pending writes of one checkpoint, idempotently: a write whose (checkpoint, task, idx)
-- is already stored is left as it is, unless it is one of LangGraph's special writes (negative
-- idx: error, interrupt, resume...), which replace the stored one.
--
-- KEYS[1] write (sorted set, all scores 0)
-- ARGV[1] TTL in ms, or '' for none
-- ARGV[2..] triples: write key (what identifies it), '1' to replace / '0' to keep, payload
-- Returns the number of writes stored.

local stored = 0
for i = 2, #ARGV, 3 do
  local key, replace, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local existing = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. key .. '|', '(' .. key .. '}',
    'LIMIT', 0, 1)
  if #existing == 0 or replace == '1' then
    if #existing > 0 then
      redis.call('ZREM', KEYS[1], existing[1])
    end
    redis.call('ZADD', KEYS[1], 0, key .. '|' .. payload)
    stored = stored + 1
  end
end
if ARGV[1] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return stored
