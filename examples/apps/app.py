#!/usr/bin/env python3
"""A session-aware app with no session code: Python standard library only.

Run it behind session-sidecar (upstream: http://127.0.0.1:8000):

    python3 examples/apps/app.py &
    session-sidecar --config sidecar.yaml

GET / counts visits; POST /login?user=NAME logs in (new session id, the session attached
to its owner NAME); POST /sign-out-others signs out the user's other devices (e.g. after a
password change); POST /logout logs out with a notice for the next page.
"""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class App(BaseHTTPRequestHandler):
    def session(self):
        return json.loads(self.headers.get("X-Session", "{}"))

    def flash(self):
        return json.loads(self.headers.get("X-Session-Flash", "{}"))

    def reply(self, status, body, instructions=()):
        self.send_response(status)
        for name, value in instructions:
            self.send_header(name, json.dumps(value))
        if status in (301, 302, 303):
            self.send_header("Location", "/")
        data = body.encode()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        s, f = self.session(), self.flash()
        visits = s.get("visits", 0) + 1
        text = f"hello {s.get('user', 'stranger')}, visit {visits}\n"
        if "notice" in f:
            text = f"[{f['notice']}]\n" + text
        self.reply(200, text, [("X-Session-Incr", {"visits": 1})])

    def do_POST(self):
        url = urlparse(self.path)
        if url.path == "/login":
            user = parse_qs(url.query).get("user", ["ann"])[0]
            self.reply(303, "", [("X-Session-Regenerate", 1), ("X-Session-Owner", user),
                                 ("X-Session-Set", {"user": user}),
                                 ("X-Session-Flash-Set", {"notice": f"welcome {user}"})])
        elif url.path == "/sign-out-others":
            self.reply(303, "", [("X-Session-Revoke-Others", 1),
                                 ("X-Session-Flash-Set", {"notice": "other devices signed out"})])
        elif url.path == "/logout":
            self.reply(303, "", [("X-Session-Destroy", 1),
                                 ("X-Session-Flash-Set", {"notice": "logged out"})])
        else:
            self.reply(404, "not found\n")

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 8000), App).serve_forever()
