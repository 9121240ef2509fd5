"""End-to-end test of migrate.py: real pycket writes, the real sidecar reads.

Run by test.sh (which makes the venv and finds the sidecar binary):
    python test_migrate.py SIDECAR_BIN
It starts redis-server on a free port, a Tornado app using pycket 0.3.0's SessionMixin
and NotificationMixin (driven over HTTP, so the data is exactly what pycket writes),
runs migrate.py, then the sidecar with a Redis store in front of a small echo app, and
checks what the echo app is given for the printed cookies. Any mismatch fails.
"""
import datetime
import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "migration-test-secret-0123456789abcdef"
COOKIE_SECRET = "tornado-cookie-secret-for-pycket"

# What each pycket client stores: (session data, notifications).
SAMPLES = {
    "full": ({"user": "ann", "visits": 41, "cart": [1, 2.5, "x", None, True],
              "prefs": {"theme": "dark", "n": {"deep": [1]}}, "café": "zoë ✓",
              "big": 2 ** 70}, {"message": "migrated hello"}),
    "flash-only": ({}, {"message": "only flash"}),
    "object": ({"user": "bob", "when": datetime.datetime(2020, 1, 2)}, {}),
    "tuple": ({"user": "cy", "pair": (1, 2)}, {}),
    "int-key": ({"user": "dee", "m": {1: "a"}}, {}),
    "set": ({"tags": {"a"}}, {}),
}


# --- the two small servers, run as subprocesses of this file ---------------------------

def serve_pycket(port, redis_port):
    import tornado.ioloop
    import tornado.web
    from pycket.notification import NotificationMixin
    from pycket.session import SessionMixin

    class Write(tornado.web.RequestHandler, SessionMixin, NotificationMixin):
        def post(self, kind):
            data, flash = SAMPLES[kind]
            for k, v in data.items():
                self.session.set(k, v)
            for k, v in flash.items():
                self.notifications.set(k, v)

    class Id(tornado.web.RequestHandler, SessionMixin):
        def get(self):
            self.session.get("-")  # pycket sets its cookie on any first use
            self.write(self.get_secure_cookie("PYCKET_ID") or b"")

    storage = {"host": "127.0.0.1", "port": redis_port, "db_sessions": 0,
               "db_notifications": 1}
    app = tornado.web.Application([(r"/write/(.+)", Write), ("/id", Id)],
                                  cookie_secret=COOKIE_SECRET,
                                  pycket={"engine": "redis", "storage": storage})
    app.listen(port, address="127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


def serve_adopting(port, redis_port):
    """A Tornado app on sidecar_session that adopts pycket sessions (adopt.py)."""
    import redis
    import tornado.ioloop
    import tornado.web

    sys.path.insert(0, os.path.join(HERE, "..", "apps", "tornado"))
    from adopt import adopt
    from sidecar_session import NotificationMixin, SessionMixin

    stores = redis.Redis(port=redis_port, db=0), redis.Redis(port=redis_port, db=1)

    class Page(SessionMixin, NotificationMixin, tornado.web.RequestHandler):
        def get(self):
            dropped = adopt(self, *stores)
            self.write({"status": self.session.status, "session": dict(self.session._data),
                        "flash": {k: self.notifications.get(k) for k in
                                  list(self.notifications.keys())},
                        "dropped": dropped})

    app = tornado.web.Application([("/", Page)], cookie_secret=COOKIE_SECRET)
    app.listen(port, address="127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


def serve_echo(port):
    """Answers with the session headers it was given; /incr and /set write."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({k: self.headers.get("X-Session" + k, "")
                               for k in ("", "-Flash", "-Status")}).encode()
            self.send_response(200)
            if self.path == "/incr":
                self.send_header("X-Session-Incr", '{"visits":1}')
            if self.path == "/set":
                self.send_header("X-Session-Set", json.dumps({"café": "new"}))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Echo).serve_forever()


# --- the test -------------------------------------------------------------------------

PASSED = 0


def check(cond, what):
    global PASSED
    if not cond:
        raise AssertionError(what)
    PASSED += 1
    print("ok", what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:2]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
    return dict(pairs)


def through_sidecar(port, cookie, path="/"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Cookie": f"session={cookie}"})
    with urllib.request.urlopen(req) as resp:
        seen = json.loads(resp.read())
    return (json.loads(seen[""], object_pairs_hook=no_duplicates),
            json.loads(seen["-Flash"]), seen["-Status"])


def migrate(redis_port, *flags):
    env = {**os.environ, "SESSION_SECRET": SECRET}
    out = subprocess.run([sys.executable, os.path.join(HERE, "migrate.py"),
                          "--from", f"redis://127.0.0.1:{redis_port}", *flags],
                         env=env, capture_output=True, text=True, check=True)
    print(out.stderr, end="")
    return [json.loads(line) for line in out.stdout.splitlines()], out.stderr


def as_json(value):
    return json.loads(json.dumps(value))


def main(sidecar_bin):
    import redis

    procs = []

    def start(args, port, **kw):
        p = subprocess.Popen(args, **kw)
        procs.append(p)
        wait_port(port, p)
        return p

    tmp = tempfile.mkdtemp()
    try:
        rport, pport, eport, sport = (free_port() for _ in range(4))
        start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", tmp], rport, stdout=subprocess.DEVNULL)
        start([sys.executable, __file__, "--serve-pycket", str(pport), str(rport)], pport)
        start([sys.executable, __file__, "--serve-echo", str(eport)], eport)
        r0 = redis.Redis(port=rport, db=0)
        r1 = redis.Redis(port=rport, db=1)
        r0.set("unrelated", "keep me")

        def pycket_client(kind):
            """A browser (cookie jar) that pycket gave a session of this kind."""
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            # First a visit: pycket's session and notification managers would each
            # make an id of their own on a request without its cookie.
            opener.open(f"http://127.0.0.1:{pport}/id").read()
            opener.open(urllib.request.Request(f"http://127.0.0.1:{pport}/write/{kind}",
                                               data=b"", method="POST")).read()
            return opener, jar, opener.open(f"http://127.0.0.1:{pport}/id").read().decode()

        # 1. Real pycket writes one session per sample, each with its own cookie jar.
        old_ids = {kind: pycket_client(kind)[2] for kind in SAMPLES}
        # A session as pycket wrote it on Python 2.7 (protocol 0, str as bytes).
        old_ids["py2"] = "0f3c2a1e-5b6d-4c7e-8f90-123456789abc"
        r0.set(old_ids["py2"], b"(dp0\nS'user'\np1\nS'ann'\np2\nsS'n'\np3\nI41\n"
                               b"sS'u'\np4\nVzo\\u00eb\np5\ns.", ex=3600)
        by_old = {v: k for k, v in old_ids.items()}
        check(all(len(i) == 36 for i in old_ids.values()), "pycket ids are uuid4 strings")
        check(r0.exists(old_ids["full"]) and r1.exists(old_ids["full"])
              and not r0.exists(old_ids["flash-only"]) and r1.exists(old_ids["flash-only"]),
              "pycket keys: the bare id, in db_sessions and db_notifications")
        check(0 < r0.ttl(old_ids["full"]) <= 86400, "pycket's keys expire within a day")

        # 2. A dry run writes nothing and prints no cookie.
        lines, report = migrate(rport)
        check(lines == [] and not r0.keys("session:*") and not r1.keys("session:*"),
              "dry run writes nothing")
        check("found: 7; would migrate (dry run: add --write): 3; skipped: 4" in report,
              "dry run reports 3 to migrate, 4 to skip")
        check("'when': a Python object (datetime.datetime)" in report
              and "'pair': a tuple" in report and "'m': a dict with a int key" in report
              and "'tags': a set" in report, "the report names each refused key")

        # 3. Migrate; then the sidecar, Redis store, in front of the echo app.
        lines, report = migrate(rport, "--write")
        first = {by_old[line["pycket_id"]]: line["cookie"] for line in lines}
        check(sorted(first) == ["flash-only", "full", "py2"], "default: whole sessions only")
        cfg = os.path.join(tmp, "sidecar.yaml")
        with open(cfg, "w") as f:
            json.dump({"listen": f"127.0.0.1:{sport}", "upstream": f"http://127.0.0.1:{eport}",
                       "secrets": [SECRET], "cookies": {"secure": False},
                       "admin": {"listen": None},
                       "store": {"engine": "redis", "storage": {
                           "host": "127.0.0.1", "port": rport,
                           "db_sessions": 0, "db_notifications": 1}}}, f)
        start([sidecar_bin, "--config", cfg], sport, stderr=subprocess.DEVNULL)

        data, flash, status = through_sidecar(sport, first["full"])
        check(status == "active", "the printed cookie loads the migrated session")
        check(data == as_json(SAMPLES["full"][0]), f"the app sees pycket's data: {data}")
        check(data["big"] == 2 ** 70, "integers beyond 64 bits stay exact")
        check(flash == {"message": "migrated hello"}, "pycket's notification is delivered")
        data, flash, _ = through_sidecar(sport, first["full"], "/incr")
        check(flash == {}, "... once")
        through_sidecar(sport, first["full"], "/set")
        data, _, _ = through_sidecar(sport, first["full"])
        check(data["visits"] == 42, "Incr works on a migrated integer")
        check(data["café"] == "new", "Set replaces a migrated non-ASCII key (same field)")
        data, flash, status = through_sidecar(sport, first["flash-only"])
        check((data, flash, status) == ({}, {"message": "only flash"}, "active"),
              "notifications without a session migrate to an empty session")
        check(through_sidecar(sport, first["py2"])[0] == {"user": "ann", "n": 41, "u": "zoë"},
              "a Python 2 pickle migrates too")
        bad = first["full"][:-2] + ("AA" if not first["full"].endswith("AA") else "BA")
        check(through_sidecar(sport, bad)[2] == "invalid", "a tampered cookie is refused")

        # 4. --partial --tuples-as-lists --delete-old: the rest, then pycket's keys go.
        lines, report = migrate(rport, "--write", "--partial", "--tuples-as-lists",
                                "--delete-old")
        second = {by_old[line["pycket_id"]]: line["cookie"] for line in lines}
        check(sorted(second) == ["flash-only", "full", "int-key", "object", "py2",
                                  "tuple"],
              "partial: every session with a representable key")
        expect = {"object": {"user": "bob"}, "tuple": {"user": "cy", "pair": [1, 2]},
                  "int-key": {"user": "dee"}}
        for kind, want in expect.items():
            check(through_sidecar(sport, second[kind])[0] == want, f"partial {kind}: {want}")
        check(through_sidecar(sport, first["full"])[0]["visits"] == 42,
              "an earlier migration's session is a session of its own")
        left = [k for k in r0.keys() + r1.keys() if k.decode() in by_old]
        check(left == [old_ids["set"].encode()], "--delete-old removed what it copied")
        check(r0.get("unrelated") == b"keep me", "other keys are left alone")
        for key in r0.keys("session:*") + r1.keys("session:*"):
            db = r1 if key.endswith(b":flash") else r0
            check(0 < db.pttl(key) <= 86400 * 1000, f"{key.decode()[:20]}… expires")
        lines, report = migrate(rport)
        check("found: 1; would migrate (dry run: add --write): 0; skipped: 1" in report,
              "a second run finds only the unmigratable session")

        # 5. Adoption: a browser still holding its pycket cookie stays logged in.
        opener, jar, old = pycket_client("full")
        pycket_cookie = next(c.value for c in jar if c.name == "PYCKET_ID")
        cfg2 = os.path.join(tmp, "sidecar2.yaml")
        aport, s2port = free_port(), free_port()
        with open(cfg2, "w") as f:
            json.dump({**json.load(open(cfg)), "listen": f"127.0.0.1:{s2port}",
                       "upstream": f"http://127.0.0.1:{aport}"}, f)
        start([sys.executable, __file__, "--serve-adopting", str(aport), str(rport)], aport)
        start([sidecar_bin, "--config", cfg2], s2port, stderr=subprocess.DEVNULL)
        page = lambda: json.loads(opener.open(f"http://127.0.0.1:{s2port}/").read())
        seen = page()
        check(seen["dropped"] == [] and seen["status"] == "none"
              and seen["session"] == as_json(SAMPLES["full"][0])
              and seen["flash"] == {"message": "migrated hello"},
              "first visit with a pycket cookie: adopted, the page sees it all")
        names = sorted(c.name for c in jar)
        check(names == ["session"], f"pycket cookie cleared, sidecar cookie set: {names}")
        check(not r0.exists(old) and not r1.exists(old), "the pycket session is taken")
        seen = page()
        check(seen["status"] == "active" and seen["session"] == as_json(SAMPLES["full"][0])
              and seen["flash"] == {}, f"next visit: the data, from the sidecar: {seen}")
        replay = urllib.request.Request(f"http://127.0.0.1:{s2port}/",
                                        headers={"Cookie": f"PYCKET_ID={pycket_cookie}"})
        seen = json.loads(urllib.request.urlopen(replay).read())
        check(seen["session"] == {} and seen["dropped"] == [],
              "a replayed pycket cookie adopts nothing")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"{PASSED} passed, 0 failed")


if __name__ == "__main__":
    if sys.argv[1] == "--serve-pycket":
        serve_pycket(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "--serve-adopting":
        serve_adopting(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "--serve-echo":
        serve_echo(int(sys.argv[2]))
    else:
        try:
            main(sys.argv[1])
        except AssertionError as e:
            print(f"FAIL: {e}\n{PASSED} passed, 1 failed")
            sys.exit(1)
