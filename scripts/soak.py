#!/usr/bin/env python3
"""The soak driver behind scripts/soak.sh (read that file's header first).

Starts redis-server (append-only file with `appendfsync always`, so every write Redis
acknowledged survives its restarts, SIGKILL included: with `everysec` Redis may answer
writes it has not yet written to the file while a background fsync runs, and a SIGKILL
then loses them; seen in a 30-minute run here: 13 acknowledged visits lost at one
SIGKILL), the python-stdlib example app as the upstream, and the sidecar binary given;
drives mixed traffic from worker threads for the given minutes while redis-server is
restarted every `--restart-every` seconds; samples the sidecar's RSS, open file
descriptors, threads and tokio tasks (the `session_sidecar_runtime_alive_tasks` gauge)
once a minute; prints a table, the first and last samples after warm-up, and a verdict.

Each worker owns its sessions: it logs in as its own user and checks, on every page, that
the page shows that user (or anonymous) and a visit count one above the last it saw (a
store restart keeps the data: append-only file; after a 503 the failed request's count
may or may not have been applied before the store died, so one more is allowed then).
Anything else is an error: another session's data, a lost or doubled write, a status
other than 200/303/503, a connection error.
"""

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APP = os.path.join(ROOT, "examples", "apps", "python-stdlib", "app.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"soak: {what} exited with {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"soak: {what} did not listen on {port} within {timeout}s")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.errors = []

    def add(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def error(self, text):
        with self.lock:
            self.counts["error"] = self.counts.get("error", 0) + 1
            if len(self.errors) < 20:
                self.errors.append(text)

    def snapshot(self):
        with self.lock:
            return dict(self.counts)


PAGE = re.compile(r"status: (\S+)\nuser: (.*)\nvisits: (\d+)\nflash: (.*)\n?$")


class Worker(threading.Thread):
    """One browser: a cookie jar, a keep-alive connection, its own user name."""

    def __init__(self, n, port, stats, stop):
        super().__init__(daemon=True)
        self.n, self.port, self.stats, self.stop = n, port, stats, stop
        self.user = f"soak-user-{n}"
        self.cookie = None
        self.visits = None  # what the next page must show minus one; None: unknown
        self.maybe_applied = False  # a 503 since: its Incr may have been applied
        self.conn = None
        self.rng = random.Random(n)

    def request(self, method, path, body=None):
        headers = {"Host": "soak"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read().decode("utf-8", "replace")
                break
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                self.conn = None
                # Whether the sidecar applied the request is unknown now.
                self.visits = None
                if attempt == 1:
                    self.stats.error(f"worker {self.n}: {method} {path}: {e!r}")
                    return None, ""
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie" and value.startswith("session="):
                v = value.split(";", 1)[0]
                self.cookie = None if v == "session=" else v
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        self.stats.add(resp.status)
        if resp.status not in (200, 303, 503):
            self.stats.error(f"worker {self.n}: {method} {path} -> {resp.status}: {data[:200]!r}")
        return resp.status, data

    def page(self):
        status, body = self.request("GET", "/")
        if status == 503:
            # The store failed during this request: its Incr may or may not have been
            # applied before the failure (a reply lost with the store), so the next page
            # may show one visit more than expected; never two more, never one less.
            self.maybe_applied = True
        if status != 200:
            return
        m = PAGE.match(body)
        if not m:
            self.stats.error(f"worker {self.n}: unexpected page {body[:200]!r}")
            return
        sstatus, user, visits = m.group(1), m.group(2), int(m.group(3))
        if user not in (self.user, "anonymous"):
            self.stats.error(f"worker {self.n}: saw another session's user {user!r}")
        if sstatus == "active" and self.visits is not None:
            allowed = (self.visits + 1, self.visits + 2) if self.maybe_applied else (self.visits + 1,)
            if visits not in allowed:
                self.stats.error(
                    f"worker {self.n}: visits {visits} after {self.visits} (lost or doubled write)"
                )
        self.maybe_applied = False
        self.visits = visits if sstatus in ("active", "none") else None

    def run(self):
        while not self.stop.is_set():
            r = self.rng.random()
            if r < 0.80:
                self.page()
            elif r < 0.90:
                status, _ = self.request(
                    "POST", "/login", urllib.parse.urlencode({"user": self.user})
                )
                if status == 303:
                    self.visits = None  # a new session: the count carries over
            else:
                status, _ = self.request("POST", "/logout", "")
                if status == 303:
                    self.visits = None
        if self.conn is not None:
            self.conn.close()


def rss_fds_threads(pid):
    rss = threads = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def scrape(admin_port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        try:
            out[base] = out.get(base, 0) + float(value)
        except ValueError:
            pass
        if base == "session_sidecar_requests_total":
            m = re.search(r'class="(\dxx)"', name)
            if m:
                key = f"requests_{m.group(1)}"
                out[key] = out.get(key, 0) + float(value)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sidecar", required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--restart-every", type=float, default=120, help="seconds between store restarts")
    ap.add_argument("--warmup", type=float, default=60, help="seconds before the first sample counts")
    ap.add_argument("--sample-every", type=float, default=60)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="soak.")
    procs = {}

    def cleanup(*_):
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))
    redis_port, app_port, port, admin_port = free_port(), free_port(), free_port(), free_port()
    redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--dir", work, "--save", "", "--appendonly", "yes", "--appendfsync", "always"]
    redis_log = open(os.path.join(work, "redis.log"), "a")

    def start_redis():
        procs["redis"] = subprocess.Popen(redis_cmd, stdout=redis_log, stderr=subprocess.STDOUT)
        wait_port(redis_port, "redis-server", procs["redis"])

    try:
        start_redis()
        env = dict(os.environ, APP_PORT=str(app_port))
        procs["app"] = subprocess.Popen([sys.executable, APP], env=env,
                                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "app.log"), "w"))
        wait_port(app_port, "the example app", procs["app"])
        cfg = os.path.join(work, "sidecar.yaml")
        with open(cfg, "w") as f:
            f.write(f"""listen: 127.0.0.1:{port}
upstream: http://127.0.0.1:{app_port}
secrets: ["soak-secret-0123456789abcdef0123456789"]
store:
  engine: redis
  timeout: 500ms
  storage: {{host: 127.0.0.1, port: {redis_port}}}
cookies: {{secure: false}}
admin: {{listen: 127.0.0.1:{admin_port}}}
log: {{level: warn}}
""")
        procs["sidecar"] = subprocess.Popen([args.sidecar, "--config", cfg],
                                            stdout=subprocess.DEVNULL,
                                            stderr=open(os.path.join(work, "sidecar.log"), "w"))
        wait_port(port, "the sidecar", procs["sidecar"])
        pid = procs["sidecar"].pid

        stats, stop = Stats(), threading.Event()
        workers = [Worker(i, port, stats, stop) for i in range(args.workers)]
        for w in workers:
            w.start()
        start = time.monotonic()
        end = start + args.minutes * 60
        next_restart = start + args.restart_every
        next_sample = start
        restarts = 0
        samples = []
        print(f"soak: {args.minutes:g} min, {args.workers} workers, redis-server restarted every "
              f"{args.restart_every:g} s; files in {work}", flush=True)
        print("| t (s) | RSS MiB | FDs | threads | tasks | requests | 2xx/3xx | 503 | errors | store restarts |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        while True:
            now = time.monotonic()
            if now >= next_sample or now >= end:
                rss, fds, threads = rss_fds_threads(pid)
                m = scrape(admin_port)
                c = stats.snapshot()
                ok = sum(v for k, v in c.items() if isinstance(k, int) and k < 400)
                total = sum(v for k, v in c.items() if isinstance(k, int))
                tasks = m.get("session_sidecar_runtime_alive_tasks")
                s = dict(t=now - start, rss=rss, fds=fds, threads=threads, tasks=tasks,
                         total=total, ok=ok, e503=c.get(503, 0), errors=c.get("error", 0),
                         restarts=restarts)
                samples.append(s)
                print(f"| {s['t']:.0f} | {rss:.1f} | {fds} | {threads} | "
                      f"{'n/a' if tasks is None else int(tasks)} | {total} | {ok} | {s['e503']} | "
                      f"{s['errors']} | {restarts} |", flush=True)
                next_sample += args.sample_every
                if now >= end:
                    break
            if now >= next_restart:
                # Hard stop (SIGKILL) every other time, a clean shutdown otherwise.
                p = procs["redis"]
                p.kill() if restarts % 2 else p.terminate()
                p.wait(10)
                time.sleep(1.0)
                start_redis()
                restarts += 1
                next_restart += args.restart_every
            if procs["sidecar"].poll() is not None:
                sys.exit(f"soak: the sidecar exited with {procs['sidecar'].returncode}")
            time.sleep(0.2)
        stop.set()
        for w in workers:
            w.join(15)
        # Give the sidecar a moment to drop finished connections, then the idle state.
        time.sleep(2)
        rss, fds, threads = rss_fds_threads(pid)
        m = scrape(admin_port)
        counts = stats.snapshot()
    finally:
        cleanup()

    after = [s for s in samples if s["t"] >= args.warmup] or samples
    first, last = after[0], after[-1]
    print()
    print(f"soak: after warm-up (t={first['t']:.0f} s) vs end (t={last['t']:.0f} s): "
          f"RSS {first['rss']:.1f} -> {last['rss']:.1f} MiB, FDs {first['fds']} -> {last['fds']}, "
          f"threads {first['threads']} -> {last['threads']}, tasks {first['tasks']} -> {last['tasks']}")
    print(f"soak: idle after the load: RSS {rss:.1f} MiB, FDs {fds}, threads {threads}, "
          f"tasks {m.get('session_sidecar_runtime_alive_tasks')}, active connections "
          f"{m.get('session_sidecar_active_connections')}")
    print(f"soak: client statuses {dict(sorted((str(k), v) for k, v in counts.items()))}; "
          f"sidecar: {int(m.get('requests_2xx', 0))} 2xx, {int(m.get('requests_3xx', 0))} 3xx, "
          f"{int(m.get('requests_5xx', 0))} 5xx, {int(m.get('session_sidecar_store_errors_total', 0))} store errors; "
          f"{restarts} store restarts")
    for e in stats.errors:
        print(f"soak: error: {e}")
    failed = []
    # Flat: after warm-up RSS may move by allocator noise, not grow with time.
    if last["rss"] > first["rss"] * 1.10 + 2:
        failed.append(f"RSS grew {first['rss']:.1f} -> {last['rss']:.1f} MiB")
    if last["fds"] > first["fds"] + 4:
        failed.append(f"FDs grew {first['fds']} -> {last['fds']}")
    if counts.get("error", 0):
        failed.append(f"{counts['error']} errors")
    if not counts.get(200):
        failed.append("no request succeeded")
    if failed:
        print("soak: FAILED: " + "; ".join(failed))
        sys.exit(1)
    print("soak: passed (RSS and FDs flat after warm-up, no wrong answer)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
