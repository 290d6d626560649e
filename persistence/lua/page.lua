-- One page of live thread ids, in index order (expiry, then id), after a cursor.
--
-- KEYS[1] index   ARGV[1] page size   ARGV[2] cursor id ('' = start)   ARGV[3] cursor score
-- Returns a flat list id1, score1, id2, score2, ...
--
-- Expired entries sort first (their scores are in the past), so skipping them costs one
-- ZCOUNT. The cursor's rank is found with ZRANK; if the cursor entry was removed or re-scored
-- meanwhile, it is put back at the cursor's score for the lookup and restored at once (the
-- script is atomic, so nobody sees it). Entries never move to an earlier position, so every
-- id live for the whole iteration is returned at least once.

-- A score as a number; Lua 5.2+ (fakeredis can run them) refuses tonumber('inf').
local function num(s)
  if s == 'inf' or s == '+inf' then
    return math.huge
  end
  return tonumber(s)
end

local idx = KEYS[1]
local size = tonumber(ARGV[1])
local start = 0
if ARGV[2] ~= '' then
  local member, score = ARGV[2], ARGV[3]
  local held = redis.call('ZSCORE', idx, member)
  if held == score then
    start = redis.call('ZRANK', idx, member) + 1
  else
    -- ZRANK counts the entries before the cursor; the cursor entry itself only counts
    -- if it really sits before the cursor (moved to an earlier score), not if it was
    -- removed or moved later: skipping it would skip the first entry after the cursor.
    redis.call('ZADD', idx, score, member)
    start = redis.call('ZRANK', idx, member)
    if held then
      redis.call('ZADD', idx, held, member)
      if num(held) < num(score) then
        start = start + 1
      end
    else
      redis.call('ZREM', idx, member)
    end
  end
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZCOUNT', idx, '-inf', now_ms)
if start < expired then
  start = expired
end
return redis.call('ZRANGE', idx, start, start + size - 1, 'WITHSCORES')
