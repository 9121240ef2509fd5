-- session-sidecar: load one session in one round trip (layout: see src/store/redis.rs).
--
-- KEYS[1] data hash (db_sessions)    KEYS[2] flash hash (db_notifications)
-- ARGV[1] db_sessions  ARGV[2] db_notifications  ARGV[3] session.ttl in ms
-- ARGV[4] session.absolute_ttl in ms
-- ARGV[5] '1': refresh the idle lifetime when due (Touch::Refresh); '': never (Touch::Keep)
-- ARGV[6] session.touch_after in ms (0: every refreshing load refreshes)
-- ARGV[7] '1': add the freshness token for the client-side cache (store.cache); '': not
--
-- Returns one string (a nested array reply costs the client far more to parse):
--   'N' (none) | 'C' (corrupt) |
--   'F <max_age or -> <seconds left to the absolute limit> <bytes of data>
--      <bytes of owner or -> <bound check or ->[ <freshness>]\n' .. owner .. data pairs
--      .. flash pairs
-- where pairs are netstrings, '<len>:<field>,<len>:<value>,' (src/store/pairs.rs), the
-- owner is its JSON string literal, and the bound check, present when an owned session
-- was refreshed, is '<now>,<idle>,<bound>,<deadline>' (ms; the arguments of
-- `owners::index_due`, which the engine evaluates). The freshness token, with ARGV[7] only,
-- is '<1 if refreshed, else 0>,<ms since seen or ->,<PTTL in ms or ->,<ms to the absolute
-- limit>' (src/store/redis/cache.rs, `Freshness`).

local db_sessions = tonumber(ARGV[1])
local db_notifications = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local absolute_ms = tonumber(ARGV[4])
local touch = ARGV[5] == '1'
local touch_after = tonumber(ARGV[6])
local for_cache = ARGV[7] == '1'

local now = now_ms()

use_db(db_sessions)
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then
  return 'N'
end

-- User fields are JSON string literals and so start with '"' (byte 34); meta fields never do.
local data = {}
local created, max_age, owner, bound, seen
for i = 1, #raw, 2 do
  local field = raw[i]
  if string.byte(field, 1) == 34 then
    data[#data + 1] = netstring_pair(field, raw[i + 1])
  elseif field == 'created' then
    created = tonumber(raw[i + 1])
  elseif field == 'max_age' then
    max_age = raw[i + 1]
  elseif field == 'owner' then
    owner = raw[i + 1]
  elseif field == 'bound' then
    bound = raw[i + 1]
  elseif field == 'seen' then
    seen = raw[i + 1]
  end
end
if not created then
  return 'C'
end

local deadline = created + absolute_ms
local remaining = deadline - now
if remaining <= 0 then
  -- Past the absolute lifetime: the key's TTL should already have removed it; make sure.
  redis.call('DEL', KEYS[1])
  use_db(db_notifications)
  redis.call('DEL', KEYS[2])
  return 'N'
end

local idle = ttl_ms
if max_age then
  local seconds = tonumber(max_age)
  if not seconds then
    return 'C'
  end
  idle = seconds * 1000
end
if bound then
  bound = tonumber(bound)
  if not bound then
    return 'C'
  end
end
if owner and not bound then
  return 'C'
end

-- Refresh only when asked and due: a session written before `seen` existed is due.
local refresh = false
if touch then
  if seen then
    seen = tonumber(seen)
    if not seen then
      return 'C'
    end
    refresh = now - seen >= touch_after
  else
    refresh = true
  end
end

local check = '-'
if refresh then
  -- owners::capped_expiry(min(now + idle, deadline), bound), as a TTL from now.
  local ttl = math.min(idle, remaining)
  if bound then
    ttl = math.min(ttl, bound - now)
  end
  if ttl <= 0 then
    -- Past its bound: its TTL should already have removed it.
    redis.call('DEL', KEYS[1])
    use_db(db_notifications)
    redis.call('DEL', KEYS[2])
    return 'N'
  end
  redis.call('PEXPIRE', KEYS[1], int_text(ttl))
  redis.call('HSET', KEYS[1], 'seen', int_text(now))
  if owner then
    check = int_text(now) .. ',' .. int_text(idle) .. ',' .. int_text(bound) .. ',' ..
      int_text(deadline)
  end
end

local freshness = ''
if for_cache then
  local since = '-'
  if refresh then
    since = '0'
  elseif seen then
    seen = tonumber(seen)
    if not seen then
      return 'C'
    end
    since = int_text(math.max(0, now - seen))
  end
  local pttl = redis.call('PTTL', KEYS[1])
  local ttl_text = '-'
  if pttl >= 0 then
    ttl_text = int_text(pttl)
  end
  freshness = ' ' .. (refresh and '1' or '0') .. ',' .. since .. ',' .. ttl_text .. ',' ..
    int_text(remaining)
end

-- Read and delete in one atomic script: a notification is delivered exactly once even
-- when several requests of the session load concurrently.
use_db(db_notifications)
local flash = redis.call('HGETALL', KEYS[2])
local pending = {}
if #flash > 0 then
  redis.call('DEL', KEYS[2])
  for i = 1, #flash, 2 do
    pending[#pending + 1] = netstring_pair(flash[i], flash[i + 1])
  end
end

data = table.concat(data)
return 'F ' .. (max_age or '-') .. ' ' .. int_text(math.floor(remaining / 1000)) .. ' ' ..
  #data .. ' ' .. (owner and #owner or '-') .. ' ' .. check .. freshness .. '\n' ..
  (owner or '') ..
  data .. table.concat(pending)
