-- session-sidecar: can this connection use the configured databases?
-- ARGV: db numbers to try. Returns {} or {index into ARGV (1-based), error text}.
-- SELECT inside a script does not move the calling connection (Redis restores its db),
-- so probing on a shared multiplexed connection is safe.
for i = 1, #ARGV do
  local r = redis.pcall('SELECT', tonumber(ARGV[i]))
  if type(r) == 'table' and r.err then
    return {tostring(i), r.err}
  end
end
return {}
