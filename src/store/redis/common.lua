-- Shared prelude of the session scripts: src/store/redis.rs prepends it to load.lua and
-- apply.lua (Lua scripts cannot include each other).

-- TIME before writes needs effects replication on Redis < 5; it is the default (and this
-- a no-op) on newer servers.
if redis.replicate_commands then redis.replicate_commands() end

-- The calling connection always sits on db 0 and Redis restores it after the script
-- (verified on 7.0), so SELECT only when a db other than the current one is needed: a
-- Redis that forbids SELECT then still works with both dbs at 0.
local current_db = 0
local function use_db(n)
  if n ~= current_db then
    redis.call('SELECT', n)
    current_db = n
  end
end

-- Integer ms as text: tostring() would print large doubles in exponent form.
local function int_text(x)
  return string.format('%.0f', x)
end

-- The store's clock is the one clock all sidecars share.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- One field and its value as netstrings ('<len>:<bytes>,' twice; src/store/pairs.rs).
local function netstring_pair(field, value)
  return #field .. ':' .. field .. ',' .. #value .. ':' .. value .. ','
end
