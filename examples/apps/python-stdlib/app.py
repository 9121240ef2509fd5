#!/usr/bin/env python3
"""A session-aware app with no session code: Python standard library only.

It implements the contract of examples/README.md. Run it behind session-sidecar
(upstream: http://127.0.0.1:8000, the upstream of sidecar.yaml):

    examples/apps/python-stdlib/run.sh &          # or: python3 app.py
    session-sidecar --config sidecar.yaml

GET / shows the session's status, user, visit count and flash; POST /login (form body
user=NAME) logs in (new session id, the session attached to its owner NAME);
POST /sign-out-others signs out the user's other devices (e.g. after a password
change); POST /logout logs out with a notice for the next page.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_FORM = 64 * 1024


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def header_json(self, name):
        try:
            value = json.loads(self.headers.get(name, "{}"))
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def reply(self, status, body="", instructions=(), location=None):
        self.send_response(status)
        for name, value in instructions:
            # The stack's JSON library writes every instruction; ensure_ascii (the
            # default) keeps header values ASCII whatever the user name.
            self.send_header(name, json.dumps(value, separators=(",", ":")))
        if location:
            self.send_header("Location", location)
        data = body.encode()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if urlsplit(self.path).path != "/":
            return self.reply(404, "not found\n")
        session = self.header_json("X-Session")
        flash = self.header_json("X-Session-Flash")
        visits = session.get("visits", 0)
        visits = (visits if isinstance(visits, int) else 0) + 1
        body = (
            f"status: {self.headers.get('X-Session-Status', 'none')}\n"
            f"user: {session.get('user', 'anonymous')}\n"
            f"visits: {visits}\n"
            f"flash: {flash.get('message', '-')}\n"
        )
        self.reply(200, body, [("X-Session-Incr", {"visits": 1})])

    def read_form(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_FORM:
            return {}
        raw = self.rfile.read(length).decode("utf-8", "replace")
        return parse_qs(raw, keep_blank_values=True)

    def do_POST(self):
        path = urlsplit(self.path).path
        form = self.read_form()  # always drain the body (keep-alive)
        if path == "/login":
            user = (form.get("user") or [""])[0]
            if not user:
                return self.reply(400, "user is required\n")
            self.reply(303, location="/", instructions=[
                ("X-Session-Regenerate", 1),
                ("X-Session-Owner", user),
                ("X-Session-Set", {"user": user}),
                ("X-Session-Flash-Set", {"message": f"welcome {user}"}),
            ])
        elif path == "/logout":
            self.reply(303, location="/", instructions=[
                ("X-Session-Destroy", 1),
                ("X-Session-Flash-Set", {"message": "logged out"}),
            ])
        elif path == "/sign-out-others":
            self.reply(303, location="/", instructions=[
                ("X-Session-Revoke-Others", 1),
                ("X-Session-Flash-Set", {"message": "other devices signed out"}),
            ])
        else:
            self.reply(404, "not found\n")

    def do_PUT(self):
        self.read_form()
        self.reply(404, "not found\n")

    do_DELETE = do_PATCH = do_PUT

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("APP_PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), App)
    print(f"python-stdlib app on http://127.0.0.1:{port}/", flush=True)
    server.serve_forever()
