// An Express app with no session code of its own, behind session-sidecar.
//
// The sidecar injects the session into request headers (docs/protocol.md §4) and applies
// the instructions this app sends back in response headers (§5; flash §8, owners §11).
// The routes are the contract of examples/README.md.
//
//   APP_PORT=8000 ./run.sh
//   session-sidecar --config sidecar.yaml      # upstream: http://127.0.0.1:8000
const express = require("express");

const app = express();
app.use(express.urlencoded({ extended: false }));

// The sidecar's headers are compact JSON, non-ASCII escaped (§4.1): JSON.parse reads them.
const header = (req, name) => JSON.parse(req.get(name) || "{}");

// JSON.stringify keeps non-ASCII characters as they are, and Node refuses (or mangles)
// such bytes in a header value: escape everything outside printable ASCII as \uXXXX
// (§5.2). Outside strings JSON text is ASCII already, so this only touches strings.
const json = (value) =>
  JSON.stringify(value).replace(
    /[\u007f-\uffff]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"),
  );

// Send one instruction (§5.1) whose value is JSON.
const instruct = (res, name, value) => res.set(name, json(value));

app.get("/", (req, res) => {
  const session = header(req, "X-Session");
  const flash = header(req, "X-Session-Flash");
  instruct(res, "X-Session-Incr", { visits: 1 });
  res.type("text/plain; charset=utf-8").send(
    `status: ${req.get("X-Session-Status") || "none"}\n` +
      `user: ${session.user ?? "anonymous"}\n` +
      `visits: ${(session.visits || 0) + 1}\n` +
      `flash: ${flash.message ?? "-"}\n`,
  );
});

app.post("/login", (req, res) => {
  const user = req.body && req.body.user;
  if (typeof user !== "string" || user === "") {
    return res.status(400).type("text/plain; charset=utf-8").send("user is required\n");
  }
  instruct(res, "X-Session-Regenerate", 1); // a new session id on login (§9.4)
  instruct(res, "X-Session-Owner", user); // attach the session to its owner (§11)
  instruct(res, "X-Session-Set", { user });
  instruct(res, "X-Session-Flash-Set", { message: `welcome ${user}` });
  res.redirect(303, "/");
});

app.post("/logout", (req, res) => {
  instruct(res, "X-Session-Destroy", 1); // then the flash starts a fresh session (§5.3)
  instruct(res, "X-Session-Flash-Set", { message: "logged out" });
  res.redirect(303, "/");
});

app.post("/sign-out-others", (req, res) => {
  instruct(res, "X-Session-Revoke-Others", 1); // the owner's other sessions (§11.1)
  instruct(res, "X-Session-Flash-Set", { message: "other devices signed out" });
  res.redirect(303, "/");
});

// Anything else falls through to Express's own 404.

const port = Number(process.env.APP_PORT || 8000);
app.listen(port, "127.0.0.1", () => {
  console.log(`express example listening on http://127.0.0.1:${port}`);
});
