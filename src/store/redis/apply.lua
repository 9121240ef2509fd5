-- session-sidecar: apply one WritePlan atomically (layout: see src/store/redis.rs).
--
-- Redis does not roll back a script that fails halfway, so this script first computes
-- the complete new state in Lua tables, validates it exactly like `store::apply_ops`,
-- and only then writes. Every rejection returns before the first session write.
--
-- KEYS[1] target data hash   KEYS[2] target flash hash   KEYS[3] target scratch key
-- KEYS[4] source data hash   KEYS[5] source flash hash   (the `from`/`old` session;
--         the target's keys again when the mode has no source)
-- KEYS[6] this call's write-token key (in db_sessions, the target's hash slot)
-- ARGV[1] mode: 'E' Existing, 'C' Create, 'M' Move, 'X' Destroy, 'R' DestroyThenCreate,
--         'T' Take (read and delete the target, return its state),
--         'I' Import (create the target from a given state: ARGV[16] and the ops)
-- ARGV[2] db_sessions  ARGV[3] db_notifications  ARGV[4] session.ttl in ms
-- ARGV[5] session.absolute_ttl in ms  ARGV[6] session.max_size in bytes
-- ARGV[7] new max_age in seconds, or '' to keep the current one
-- ARGV[8] life of the write-token key in ms
-- ARGV[9] owner change: '' keep, 'A' attach (ARGV[10] owner literal, ARGV[11] bound in
--         ms from now), 'D' detach
-- ARGV[12] '1': record the client (ARGV[13] ip, ARGV[14] user agent); 'C' and 'R' only
-- ARGV[15] '1': sent for the client-side cache over its tracking connection (store.cache,
--         src/store/redis/cache.rs): read the target's keys again after writing them,
--         and return the new state; '': not
-- ARGV[16] 'I' only: the meta fields to import, as netstring pairs (what 'T' returned)
-- ARGV[16 or 17..] ops, flat: 'C' | 'D' field | 'S' field value | 'I' field by
--         | 'F' field value
--
-- Returns {'OK'} | {'GONE'} | {'CORRUPT'} | {'NOT_INTEGER', field} | {'OVERFLOW', field}
--         | {'TOO_LARGE', size} | {'FLASH_TOO_LARGE', size}
--         | {'TAKEN', meta pairs, data pairs, flash pairs} ('T' only)
--         | {'OK', '<max_age or -> <ms to the absolute limit> <TTL ms>', owner literal or '',
--            data pairs} (ARGV[15] '1', written and no flash pending)
--
-- Meta fields (`created`, `max_age`, `owner`, `bound`, `seen`, `ip`, `ua`: see
-- src/store/redis.rs) are carried as a whole by 'E', 'M', 'T' and 'I'; every write sets
-- `seen` to now and caps the TTL by `bound`.
--
-- Write tokens: a call that wrote leaves KEYS[6] behind for a while (its reply, for
-- 'T'); the same call resent (a reply lost on a dropped connection, a driver retry)
-- finds it and returns the first reply without writing again.

local mode = ARGV[1]
local db_sessions = tonumber(ARGV[2])
local db_notifications = tonumber(ARGV[3])
local ttl_ms = tonumber(ARGV[4])
local absolute_ms = tonumber(ARGV[5])
local max_size = tonumber(ARGV[6])

local token_ttl = ARGV[8]
local owner_change = ARGV[9]
local for_cache = ARGV[15] == '1'
local FIRST_OP = 16

local now = now_ms()

-- HGETALL as a map; meta fields (not starting with '"') are returned separately.
local function read_hash(key)
  local raw = redis.call('HGETALL', key)
  local fields, meta = {}, {}
  for i = 1, #raw, 2 do
    if string.byte(raw[i], 1) == 34 then
      fields[raw[i]] = raw[i + 1]
    else
      meta[raw[i]] = raw[i + 1]
    end
  end
  return fields, meta, #raw > 0
end

-- Select both dbs before anything is written: a db the server lacks must fail the script
-- while nothing is written yet (Redis would keep the writes made before the error). The
-- modes that carry a session over read its flash on the way (a SELECT fewer).
local carries = mode == 'E' or mode == 'M' or mode == 'T'
local source_flash = {}
use_db(db_notifications)
if carries then
  source_flash = read_hash(KEYS[5])
end
use_db(db_sessions)

-- Resent? Then this call already wrote: answer as the first time.
if mode == 'T' then
  local stash = redis.call('HMGET', KEYS[6], 'meta', 'data', 'flash')
  if stash[1] then
    return {'TAKEN', stash[1], stash[2], stash[3]}
  end
elseif redis.call('EXISTS', KEYS[6]) == 1 then
  return {'OK'}
end

-- Nothing outlives its session: the token lives at most as long as the session's keys.
local function remember(cap_ms, ...)
  use_db(db_sessions)
  local life = int_text(math.max(1, math.min(tonumber(token_ttl), cap_ms)))
  if select('#', ...) > 0 then
    redis.call('HSET', KEYS[6], ...)
    redis.call('PEXPIRE', KEYS[6], life)
  else
    redis.call('SET', KEYS[6], '1', 'PX', life)
  end
end

if mode == 'X' then
  use_db(db_sessions)
  redis.call('DEL', KEYS[1])
  use_db(db_notifications)
  redis.call('DEL', KEYS[2])
  return {'OK'}
end

-- Netstring pairs ('<len>:<field>,<len>:<value>,'...) as a map; nil when malformed.
local function parse_pairs(text)
  local map, pos, n = {}, 1, #text
  while pos <= n do
    local parts = {}
    for k = 1, 2 do
      local colon = string.find(text, ':', pos, true)
      local len = colon and string.find(string.sub(text, pos, colon - 1), '^[0-9]+$') and
        tonumber(string.sub(text, pos, colon - 1))
      if not len or string.sub(text, colon + len + 1, colon + len + 1) ~= ',' then
        return nil
      end
      parts[k] = string.sub(text, colon + 1, colon + len)
      pos = colon + len + 2
    end
    map[parts[1]] = parts[2]
  end
  return map
end

-- Meta fields a session cannot be read without: `created`, and `max_age`/`bound` when
-- present, are numbers.
local function valid(meta)
  local created = tonumber(meta['created'])
  if not created or (meta['max_age'] and not tonumber(meta['max_age']))
    or (meta['bound'] and not tonumber(meta['bound'])) then
    return nil
  end
  return created
end

local data, flash, meta = {}, {}, {}
local first_op = FIRST_OP
if carries then
  use_db(db_sessions)
  local exists
  data, meta, exists = read_hash(KEYS[4])
  -- Never revive: a session that is gone stays gone, and nothing is written.
  if not exists then
    return {'GONE'}
  end
  local created = valid(meta)
  if not created then
    return {'CORRUPT'}
  end
  if created + absolute_ms <= now then
    return {'GONE'}
  end
  flash = source_flash
elseif mode == 'C' or mode == 'R' then
  meta['created'] = int_text(now)
  if ARGV[12] == '1' then
    meta['ip'] = ARGV[13]
    meta['ua'] = ARGV[14]
  end
elseif mode == 'I' then
  meta = parse_pairs(ARGV[FIRST_OP] or '')
  first_op = FIRST_OP + 1
  local created = meta and valid(meta)
  if not created then
    return {'CORRUPT'}
  end
  if created + absolute_ms <= now then
    return {'GONE'}
  end
else
  return redis.error_reply('session-sidecar: unknown apply mode')
end
if ARGV[7] ~= '' then
  meta['max_age'] = ARGV[7]
end

local function pairs_text(map)
  local out = {}
  for field, value in pairs(map) do
    out[#out + 1] = netstring_pair(field, value)
  end
  return table.concat(out)
end

if mode == 'T' then
  local meta_text, data_text, flash_text = pairs_text(meta), pairs_text(data), pairs_text(flash)
  use_db(db_sessions)
  redis.call('DEL', KEYS[4])
  use_db(db_notifications)
  redis.call('DEL', KEYS[5])
  local left = tonumber(meta['created']) + absolute_ms - now
  remember(left, 'meta', meta_text, 'data', data_text, 'flash', flash_text)
  return {'TAKEN', meta_text, data_text, flash_text}
end

if owner_change == 'A' then
  local bound_ms = tonumber(ARGV[11])
  if not bound_ms then
    return redis.error_reply('session-sidecar: bad owner bound')
  end
  meta['owner'] = ARGV[10]
  meta['bound'] = int_text(now + bound_ms)
elseif owner_change == 'D' then
  meta['owner'] = nil
  meta['bound'] = nil
elseif owner_change ~= '' then
  return redis.error_reply('session-sidecar: unknown owner change')
end
meta['seen'] = int_text(now)

-- A stored value counts as an integer exactly as `store::parse_integer` says: optional
-- '-', ASCII digits, no leading zero, within i64. Compared digit by digit (string '<'
-- in Lua follows the server's collation locale).
local function is_i64(s)
  local negative = string.sub(s, 1, 1) == '-'
  local digits = negative and string.sub(s, 2) or s
  if #digits == 0 or not string.find(digits, '^[0-9]+$') then
    return false
  end
  if #digits > 1 and string.sub(digits, 1, 1) == '0' then
    return false
  end
  if #digits ~= 19 then
    return #digits < 19
  end
  local limit = negative and '9223372036854775808' or '9223372036854775807'
  for i = 1, 19 do
    local a, b = string.byte(digits, i), string.byte(limit, i)
    if a ~= b then
      return a < b
    end
  end
  return true
end

-- Lua 5.1 numbers are doubles, so sums are computed by INCRBY on a scratch key in the
-- session's hash slot (exact i64, overflow reported by Redis) and read back with GET
-- (an integer reply would come back as a double). The scratch key carries an expiry
-- and is deleted before the script ends.
local scratch_used = false
local function add(current, by)
  if current == '-0' then
    current = '0' -- parse_integer accepts it; Redis' own parser does not
  end
  use_db(db_sessions)
  scratch_used = true
  redis.call('SET', KEYS[3], current, 'PX', 60000)
  local r = redis.pcall('INCRBY', KEYS[3], by)
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'overflow', 1, true) then
      return nil
    end
    return error(r.err)
  end
  return redis.call('GET', KEYS[3])
end

local function apply_ops()
  local i = first_op
  while i <= #ARGV do
    local op = ARGV[i]
    if op == 'C' then
      data = {}
      i = i + 1
    elseif op == 'D' then
      data[ARGV[i + 1]] = nil
      i = i + 2
    elseif op == 'S' then
      data[ARGV[i + 1]] = ARGV[i + 2]
      i = i + 3
    elseif op == 'F' then
      flash[ARGV[i + 1]] = ARGV[i + 2]
      i = i + 3
    elseif op == 'I' then
      local field = ARGV[i + 1]
      local current = data[field] or '0'
      if not is_i64(current) then
        return {'NOT_INTEGER', field}
      end
      local sum = add(current, ARGV[i + 2])
      if not sum then
        return {'OVERFLOW', field}
      end
      data[field] = sum
      i = i + 3
    else
      return redis.error_reply('session-sidecar: unknown op')
    end
  end
  return nil
end

local rejected = apply_ops()
if scratch_used then
  use_db(db_sessions)
  redis.call('DEL', KEYS[3])
end
if rejected then
  return rejected
end

-- Same formula as protocol::encoded_object_len: {f1:v1,f2:v2,...}
local function encoded_len(map)
  local n, total = 0, 2
  for field, value in pairs(map) do
    total = total + #field + 1 + #value
    n = n + 1
  end
  if n > 1 then
    total = total + n - 1
  end
  return total
end

local size = encoded_len(data)
if size > max_size then
  return {'TOO_LARGE', int_text(size)}
end
size = encoded_len(flash)
if size > max_size then
  return {'FLASH_TOO_LARGE', int_text(size)}
end

-- Validated: now write. Every key gets TTL = min(idle lifetime, time left to the
-- absolute limit, time left to the bound of an owned session).
local remaining = tonumber(meta['created']) + absolute_ms - now
local idle = ttl_ms
if meta['max_age'] then
  idle = tonumber(meta['max_age']) * 1000
end
local ttl_ms_left = math.min(idle, remaining)
if meta['bound'] then
  ttl_ms_left = math.min(ttl_ms_left, tonumber(meta['bound']) - now)
end
local ttl = int_text(ttl_ms_left)

-- HSET in chunks: unpack() of a very large table would overflow Lua's C stack.
local function write_hash(key, pairs_list)
  local chunk = {}
  for i = 1, #pairs_list do
    chunk[#chunk + 1] = pairs_list[i]
    if #chunk >= 1000 then
      redis.call('HSET', key, unpack(chunk))
      chunk = {}
    end
  end
  if #chunk > 0 then
    redis.call('HSET', key, unpack(chunk))
  end
  redis.call('PEXPIRE', key, ttl)
end

if mode == 'M' or mode == 'R' then
  use_db(db_sessions)
  redis.call('DEL', KEYS[4])
  use_db(db_notifications)
  redis.call('DEL', KEYS[5])
end

if ttl_ms_left <= 0 then
  -- Past its bound already (a kept bound that passed): the session dies now.
  use_db(db_sessions)
  redis.call('DEL', KEYS[1])
  remember(1)
  use_db(db_notifications)
  redis.call('DEL', KEYS[2])
  return {'OK'}
end

local data_list = {}
for field, value in pairs(meta) do
  data_list[#data_list + 1] = field
  data_list[#data_list + 1] = value
end
for field, value in pairs(data) do
  data_list[#data_list + 1] = field
  data_list[#data_list + 1] = value
end
-- For the cache: Redis tracks a key for this connection only while the last thing it
-- did to the key was a read (its own writes are not reported: NOLOOP, and they end the
-- tracking), so each key is read again after its last write. (Redis 7.0 counts any read
-- in a script as a read of all its KEYS; 7.2 and later only of the keys read: read both.)
use_db(db_sessions)
redis.call('DEL', KEYS[1])
write_hash(KEYS[1], data_list)
remember(tonumber(ttl))
if for_cache then
  redis.call('EXISTS', KEYS[1])
end

use_db(db_notifications)
local flash_list = {}
for field, value in pairs(flash) do
  flash_list[#flash_list + 1] = field
  flash_list[#flash_list + 1] = value
end
-- 'E' read the target's flash hash: when it was empty there is nothing to delete.
if not (mode == 'E' and next(source_flash) == nil) then
  redis.call('DEL', KEYS[2])
end
if #flash_list > 0 then
  write_hash(KEYS[2], flash_list)
end
if for_cache then
  redis.call('EXISTS', KEYS[2])
  if #flash_list == 0 then
    return {'OK', (meta['max_age'] or '-') .. ' ' .. int_text(remaining) .. ' ' .. ttl,
      meta['owner'] or '', pairs_text(data)}
  end
end
return {'OK'}
