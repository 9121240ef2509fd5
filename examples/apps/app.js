// A session-aware app with no session code: Node.js, built-in modules only.
//
//   node examples/apps/app.js &
//   session-sidecar --config sidecar.yaml      # upstream: http://127.0.0.1:8000
//
// GET / counts visits; POST /login?user=NAME logs in (new session id, the session attached
// to its owner NAME); POST /sign-out-others signs out the user's other devices (e.g. after
// a password change); POST /logout logs out with a notice for the next page.
const http = require("http");

http
  .createServer((req, res) => {
    const session = JSON.parse(req.headers["x-session"] || "{}");
    const flash = JSON.parse(req.headers["x-session-flash"] || "{}");
    const url = new URL(req.url, "http://app");
    const set = (name, value) => res.setHeader(name, JSON.stringify(value));
    if (req.method === "POST" && url.pathname === "/login") {
      const user = url.searchParams.get("user") || "ann";
      set("X-Session-Regenerate", 1);
      set("X-Session-Owner", user);
      set("X-Session-Set", { user });
      set("X-Session-Flash-Set", { notice: `welcome ${user}` });
      res.writeHead(303, { Location: "/" }).end();
    } else if (req.method === "POST" && url.pathname === "/sign-out-others") {
      set("X-Session-Revoke-Others", 1);
      set("X-Session-Flash-Set", { notice: "other devices signed out" });
      res.writeHead(303, { Location: "/" }).end();
    } else if (req.method === "POST" && url.pathname === "/logout") {
      set("X-Session-Destroy", 1);
      set("X-Session-Flash-Set", { notice: "logged out" });
      res.writeHead(303, { Location: "/" }).end();
    } else {
      const visits = (session.visits || 0) + 1;
      set("X-Session-Incr", { visits: 1 });
      const notice = flash.notice ? `[${flash.notice}]\n` : "";
      res.end(`${notice}hello ${session.user || "stranger"}, visit ${visits}\n`);
    }
  })
  .listen(8000, "127.0.0.1");
