// A session-aware app with no session code: Node.js, built-in modules only.
//
// It implements the contract of examples/README.md. Run it behind session-sidecar
// (upstream: http://127.0.0.1:8000, the upstream of sidecar.yaml):
//
//   examples/apps/node-stdlib/run.sh &        # or: node app.js
//   session-sidecar --config sidecar.yaml
//
// GET / shows the session's status, user, visit count and flash; POST /login (form body
// user=NAME) logs in (new session id, the session attached to its owner NAME);
// POST /sign-out-others signs out the user's other devices (e.g. after a password
// change); POST /logout logs out with a notice for the next page.
"use strict";
const http = require("http");

const MAX_FORM = 64 * 1024;

// JSON.stringify, with every non-ASCII character escaped: Node refuses raw non-ASCII
// bytes in header values, and the sidecar reads \uXXXX escapes as any JSON parser does.
const headerJson = (value) =>
  JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));

const readJson = (req, name) => {
  try {
    const value = JSON.parse(req.headers[name] || "{}");
    return value && typeof value === "object" && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
};

const readBody = (req) =>
  new Promise((resolve) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size <= MAX_FORM) chunks.push(chunk);
    });
    req.on("end", () => resolve(size <= MAX_FORM ? Buffer.concat(chunks).toString("utf8") : ""));
    req.on("error", () => resolve(""));
  });

const send = (res, status, body = "", instructions = [], location = null) => {
  for (const [name, value] of instructions) res.setHeader(name, headerJson(value));
  if (location) res.setHeader("Location", location);
  res.setHeader("Content-Type", "text/plain; charset=utf-8");
  res.setHeader("Content-Length", Buffer.byteLength(body));
  res.writeHead(status).end(body);
};

const server = http.createServer(async (req, res) => {
  const { pathname } = new URL(req.url, "http://app");
  const form = new URLSearchParams(await readBody(req)); // always drain the body
  if (req.method === "GET" && pathname === "/") {
    const session = readJson(req, "x-session");
    const flash = readJson(req, "x-session-flash");
    const visits = (Number.isInteger(session.visits) ? session.visits : 0) + 1;
    const body =
      `status: ${req.headers["x-session-status"] || "none"}\n` +
      `user: ${session.user ?? "anonymous"}\n` +
      `visits: ${visits}\n` +
      `flash: ${flash.message ?? "-"}\n`;
    send(res, 200, body, [["X-Session-Incr", { visits: 1 }]]);
  } else if (req.method === "POST" && pathname === "/login") {
    const user = form.get("user");
    if (!user) return send(res, 400, "user is required\n");
    send(res, 303, "", [
      ["X-Session-Regenerate", 1],
      ["X-Session-Owner", user],
      ["X-Session-Set", { user }],
      ["X-Session-Flash-Set", { message: `welcome ${user}` }],
    ], "/");
  } else if (req.method === "POST" && pathname === "/logout") {
    send(res, 303, "", [
      ["X-Session-Destroy", 1],
      ["X-Session-Flash-Set", { message: "logged out" }],
    ], "/");
  } else if (req.method === "POST" && pathname === "/sign-out-others") {
    send(res, 303, "", [
      ["X-Session-Revoke-Others", 1],
      ["X-Session-Flash-Set", { message: "other devices signed out" }],
    ], "/");
  } else {
    send(res, 404, "not found\n");
  }
});

const port = Number(process.env.APP_PORT || 8000);
server.listen(port, "127.0.0.1", () => console.log(`node-stdlib app on http://127.0.0.1:${port}/`));
