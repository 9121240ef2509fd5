# A Rack app with no session code of its own, behind session-sidecar.
#
# The sidecar injects the session into request headers (docs/protocol.md §4) and applies
# the instructions this app sends back in response headers (§5; flash §8, owners §11).
# The routes are the contract of examples/README.md.
require "json"
require "rack"

class ExampleApp
  TEXT = "text/plain; charset=utf-8"

  def call(env)
    req = Rack::Request.new(env)
    case [req.request_method, req.path_info]
    when ["GET", "/"], ["HEAD", "/"] then index(req)
    when ["POST", "/login"] then login(req)
    when ["POST", "/logout"] then logout
    when ["POST", "/sign-out-others"] then sign_out_others
    else [404, { "Content-Type" => TEXT }, ["not found\n"]]
    end
  end

  private

  def index(req)
    session = session_header(req, "HTTP_X_SESSION")
    flash = session_header(req, "HTTP_X_SESSION_FLASH")
    body = "status: #{req.get_header("HTTP_X_SESSION_STATUS") || "none"}\n" \
           "user: #{session.fetch("user", "anonymous")}\n" \
           "visits: #{session.fetch("visits", 0) + 1}\n" \
           "flash: #{flash.fetch("message", "-")}\n"
    res = Rack::Response.new(body, 200, "Content-Type" => TEXT)
    instruct(res, "X-Session-Incr", { "visits" => 1 })
    res.finish
  end

  def login(req)
    user = req.POST["user"] # the urlencoded form body, decoded
    unless user.is_a?(String) && !user.empty?
      return [400, { "Content-Type" => TEXT }, ["user is required\n"]]
    end
    user = user.scrub # invalid UTF-8 becomes U+FFFD
    see_other do |res|
      instruct(res, "X-Session-Regenerate", 1) # a new session id on login (§9.4)
      instruct(res, "X-Session-Owner", user) # attach the session to its owner (§11)
      instruct(res, "X-Session-Set", { "user" => user })
      instruct(res, "X-Session-Flash-Set", { "message" => "welcome #{user}" })
    end
  end

  def logout
    see_other do |res|
      instruct(res, "X-Session-Destroy", 1) # then the flash starts a fresh session (§5.3)
      instruct(res, "X-Session-Flash-Set", { "message" => "logged out" })
    end
  end

  def sign_out_others
    see_other do |res|
      instruct(res, "X-Session-Revoke-Others", 1) # the owner's other sessions (§11.1)
      instruct(res, "X-Session-Flash-Set", { "message" => "other devices signed out" })
    end
  end

  # The sidecar's headers are compact JSON, non-ASCII escaped (§4.1).
  def session_header(req, key)
    JSON.parse(req.get_header(key) || "{}")
  end

  # Send one instruction (§5.1) whose value is JSON, escaped to printable ASCII so it is a
  # valid header (§5.2): ascii_only escapes non-ASCII but leaves DEL, which can only occur
  # inside a string.
  def instruct(res, name, value)
    res.set_header(name, JSON.generate(value, ascii_only: true).gsub("\x7f", "\\u007f"))
  end

  def see_other
    res = Rack::Response.new
    yield res
    res.redirect("/", 303)
    res.finish
  end
end
