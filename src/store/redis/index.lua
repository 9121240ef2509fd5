-- session-sidecar: one owner's index (layout: see src/store/redis.rs). Touches only the
-- index key, so it runs in the index's own hash slot on a cluster.
--
-- KEYS[1] the owner's index: a sorted set in db_sessions, member = session store key,
--         score = the entry's bound (unix ms, this server's clock)
-- ARGV[1] db_sessions
-- ARGV[2] 'A' add: ARGV[3] member, ARGV[4] bound in ms from now (margin included)
--         'M' members: ARGV[3] the most to return
--         'R' remove: ARGV[3..] members
--
-- Returns 'A': 1 | 'M': the live members (bound still ahead) | 'R': 1
--
-- Every mode is idempotent: a resent call (connector.rs) changes nothing more.

local mode = ARGV[2]
local now = now_ms()
use_db(tonumber(ARGV[1]))

if mode == 'A' then
  local bound_ms = tonumber(ARGV[4])
  if not bound_ms then
    return redis.error_reply('session-sidecar: bad index bound')
  end
  -- Drop the entries whose bound passed, then keep the later of the two bounds (GT:
  -- Redis >= 6.2); the index dies with its latest bound.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int_text(now))
  redis.call('ZADD', KEYS[1], 'GT', int_text(now + bound_ms), ARGV[3])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], last[2])
  return 1
elseif mode == 'M' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. int_text(now), '+inf', 'LIMIT', 0,
    tonumber(ARGV[3]))
elseif mode == 'R' then
  -- ZREM of the last member deletes the key. In chunks: unpack() of a very large table
  -- would overflow Lua's C stack.
  local i = 3
  while i <= #ARGV do
    local j = math.min(i + 999, #ARGV)
    redis.call('ZREM', KEYS[1], unpack(ARGV, i, j))
    i = j + 1
  end
  return 1
end
return redis.error_reply('session-sidecar: unknown index mode')
