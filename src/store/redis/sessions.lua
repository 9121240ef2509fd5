-- session-sidecar: calls on sessions by store key, for the owner index (layout: see
-- src/store/redis.rs). On a cluster a call names one session (one hash slot).
--
-- ARGV[1] db_sessions  ARGV[2] db_notifications  ARGV[3] session.absolute_ttl in ms
-- ARGV[4] mode:
--   'X' destroy: KEYS = data hash, flash hash of each session (as apply.lua's 'X').
--       Returns how many data hashes existed.
--   'S' show: KEYS = data hash of each session. Returns one reply per key: {} when the
--       session is not live, else {created, seen, expires at (all unix ms), owner or '',
--       '1' with a client record or '', ip, user agent}; 'C' when its meta is malformed.
--   'B' extend the bound: KEYS[1] data hash, ARGV[5] bound in ms from now. Returns 1 when
--       the live session has an owner (its bound is now the later of the two), else 0;
--       'C' when its meta is malformed.
--
-- Every mode is idempotent: a resent call (connector.rs) changes nothing more ('X'
-- then counts only what the first send left).

local db_sessions = tonumber(ARGV[1])
local db_notifications = tonumber(ARGV[2])
local absolute_ms = tonumber(ARGV[3])
local mode = ARGV[4]

if mode == 'X' then
  -- Select both dbs before anything is deleted (see apply.lua), then one DEL per db
  -- (a call names at most a few hundred sessions: unpack() stays far from Lua's limit).
  use_db(db_notifications)
  use_db(db_sessions)
  local data, flash = {}, {}
  for i = 1, #KEYS, 2 do
    data[#data + 1] = KEYS[i]
    flash[#flash + 1] = KEYS[i + 1]
  end
  if #data == 0 then
    return 0
  end
  local n = redis.call('DEL', unpack(data))
  use_db(db_notifications)
  redis.call('DEL', unpack(flash))
  return n
end

use_db(db_sessions)

local now = now_ms()

if mode == 'S' then
  local out = {}
  for i = 1, #KEYS do
    local m = redis.call('HMGET', KEYS[i], 'created', 'seen', 'owner', 'ip', 'ua')
    local entry = {}
    if m[1] then
      local created = tonumber(m[1])
      local seen = created
      if m[2] then
        seen = tonumber(m[2])
      end
      if not created or not seen then
        return 'C'
      end
      local deadline = created + absolute_ms
      local pttl = redis.call('PTTL', KEYS[i])
      if deadline > now and pttl ~= -2 then
        local expires = deadline
        if pttl >= 0 then
          expires = math.min(now + pttl, deadline)
        end
        entry = {int_text(created), int_text(seen), int_text(expires), m[3] or '',
          m[4] and '1' or '', m[4] or '', m[5] or ''}
      end
    end
    out[#out + 1] = entry
  end
  return out
end

if mode == 'B' then
  local m = redis.call('HMGET', KEYS[1], 'created', 'owner', 'bound')
  if not m[1] or not m[2] then
    return 0
  end
  local created, bound, bound_ms = tonumber(m[1]), tonumber(m[3]), tonumber(ARGV[5])
  if not created or (m[3] and not bound) then
    return 'C'
  end
  if not bound_ms then
    return redis.error_reply('session-sidecar: bad bound')
  end
  if created + absolute_ms <= now then
    return 0
  end
  local wanted = now + bound_ms
  if not bound or wanted > bound then
    redis.call('HSET', KEYS[1], 'bound', int_text(wanted))
  end
  return 1
end

return redis.error_reply('session-sidecar: unknown sessions mode')
