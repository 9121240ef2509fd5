#!/usr/bin/env python3
"""Side-by-side benchmark of session-sidecar against nginx proxy_pass (docs/performance.md#the-benchmark).

Everything runs on loopback in one run: an nginx upstream (`return 200`, ~100-byte
body), redis-server, memcached, a baseline nginx `proxy_pass` with upstream keepalive,
an nginx + Lua + Redis peer (cookie HMAC, HGETALL, X-Session, proxy_pass; HSET after the
response), and five sidecars (memory, redis, redis with the session cache, a 3-master
Redis Cluster, memcached). wrk drives keep-alive load; rows are
interleaved over rounds and the median is reported, as ratios to nginx proxy_pass.

Run it through `bench/run.sh`, which installs the tools and builds the release binary.
The run fails (exit 1) when a sidecar row did no session work: the upstream
answers 412 unless `X-Session` carries the benchmark session, every non-2xx counts as
an error, and `X-Session-Set` must never reach the client.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BODY = "x" * 100  # the upstream's response body
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
SESSION = '{"role":"admin","user":"bench"}'
SESSION_AFTER_WRITE = '{"n":1,"role":"admin","user":"bench"}'  # after `X-Session-Set: {"n":1}`
MARKER = '"user":"bench"'
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {timeout} s")


def which(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not path:
        raise BenchError(f"{name} not found: run bench/run.sh (it installs it) or apt-get install it")
    return path


# --- process accounting ------------------------------------------------------------


def proc_tree(pid: int) -> list[int]:
    """pid and its direct children (nginx workers)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                pids.append(int(entry))
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return total


def rss_kib(pid: int) -> int:
    total = 0
    for p in proc_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# --- peers ---------------------------------------------------------------------------


@dataclass
class Peers:
    work: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], port: int, **kw) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)
        self.procs.append(proc)
        wait_port(port, proc, name)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def nginx_conf(work: Path, name: str, workers: str, http_block: str, modules: str = "") -> Path:
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = work / f"{name}.conf"
    conf.write_text(
        f"""{modules}{user}worker_processes {workers};
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  default_type text/plain;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {work}/{name}-body;
  proxy_temp_path {work}/{name}-proxy;
  fastcgi_temp_path {work}/{name}-fastcgi;
  uwsgi_temp_path {work}/{name}-uwsgi;
  scgi_temp_path {work}/{name}-scgi;
{http_block}
}}
"""
    )
    return conf


def upstream_block(port: int) -> str:
    """The app every row reaches. It answers 412 unless the request carries the benchmark
    session in `X-Session` (`/`, `/write`) or is anonymous (`/open`), so wrk counts every
    request that did no session work as an error. The same checks run for every row (the
    direct and nginx rows send the session header themselves), so the upstream costs the
    same in each; they are exact-string `map` lookups, not regular expressions."""
    return f"""
  map $http_x_session $has_session {{
    default 0;
    '{SESSION}' 1;
    '{SESSION_AFTER_WRITE}' 1;
  }}
  map $http_x_session_status $anonymous {{
    default 0;
    none 1;
  }}
  server {{
    listen 127.0.0.1:{port};
    location = / {{
      if ($has_session = 0) {{ return 412; }}
      return 200 "{BODY}";
    }}
    location = /write {{
      if ($has_session = 0) {{ return 412; }}
      add_header X-Session-Set '{{"n":1}}';
      return 200 "{BODY}";
    }}
    location = /open {{
      if ($anonymous = 0) {{ return 412; }}
      return 200 "{BODY}";
    }}
    location = /login {{ add_header X-Session-Set '{SESSION}'; return 200 "{BODY}"; }}
    # Owner costs (`owner_costs`): the owner comes from the benchmark's request.
    location = /owner-login {{
      add_header X-Session-Regenerate 1;
      add_header X-Session-Owner $http_x_bench_owner;
      add_header X-Session-Set '{SESSION}';
      return 200 "{BODY}";
    }}
    location = /owner-revoke {{
      add_header X-Session-Revoke-Owner $http_x_bench_owner;
      return 200 "{BODY}";
    }}
    location = /echo {{ add_header X-Seen-Session $http_x_session; return 200 "{BODY}"; }}
  }}"""


def upstream_app(upstream: int) -> str:
    """The `upstream app` block both nginx peers proxy to (the same keepalive pool)."""
    return f"""  upstream app {{
    server 127.0.0.1:{upstream};
    keepalive 128;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }}"""


def proxy_block(listen: int, upstream: int) -> str:
    return f"""
{upstream_app(upstream)}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # What the sidecar rows hand the app, so the upstream does the same work.
      proxy_set_header X-Session '{SESSION}';
    }}
  }}"""


# The nginx + Lua + Redis peer: what a user could write in an afternoon instead of the
# sidecar (docs/performance.md#the-nginx--lua-peer). lua-nginx-module and resty.redis
# from Debian (libnginx-mod-http-lua, lua-nginx-redis, lua-cjson); HMAC-SHA256 and
# SHA-256 through LuaJIT's FFI into libcrypto (Debian ships no lua-resty-string).
LUA_MODULES = """load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
"""


def lua_block(listen: int, upstream: int, redis_port: int) -> str:
    """Verify the sidecar's cookie (`<id>.<base64url HMAC-SHA256(secret, "session|" id)>`),
    HGETALL the sidecar's session hash (`session:{base64url(SHA-256(id))}`) with a PEXPIRE
    of the idle TTL in the same pipeline (the sidecar refreshes on every read by default),
    hand `X-Session` to the app as the sidecar does (its fields are JSON literals, so the
    object is built by concatenation, sorted by field), proxy_pass with upstream
    keepalive; `X-Session-Set` from the app is taken off the response and written with
    HSET from a timer after the response: not atomic, not acknowledged, lost if Redis
    is down, unlike the sidecar's write."""
    return f"""
  lua_package_path "/usr/share/lua/5.1/?.lua;;";
  lua_package_cpath "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
  lua_socket_log_errors off;
  init_by_lua_block {{
    local ffi = require "ffi"
    ffi.cdef[[
      typedef struct evp_md_st EVP_MD;
      const EVP_MD *EVP_sha256(void);
      unsigned char *HMAC(const EVP_MD *md, const void *key, int key_len,
                          const unsigned char *d, size_t n, unsigned char *out, unsigned int *out_len);
      unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *out);
    ]]
    local C = ffi.load("libcrypto.so.3")
    local buf = ffi.new("unsigned char[32]")
    local len = ffi.new("unsigned int[1]")
    local secret = "{SECRET}"
    local swap = {{["+"] = "-", ["/"] = "_"}}
    local function b64url(s) return (ngx.encode_base64(s, true):gsub("[+/]", swap)) end
    bench = {{
      mac = function(id)
        C.HMAC(C.EVP_sha256(), secret, #secret, "session|" .. id, 8 + #id, buf, len)
        return b64url(ffi.string(buf, 32))
      end,
      key = function(id)
        C.SHA256(id, #id, buf)
        return "session:{{" .. b64url(ffi.string(buf, 32)) .. "}}"
      end,
      redis = require "nginx.redis",
      cjson = require "cjson.safe",
    }}
    function bench.connect()
      local red = bench.redis:new()
      red:set_timeouts(500, 500, 500)
      local ok = red:connect("127.0.0.1", {redis_port})
      return ok and red or nil
    end
    function bench.write(premature, key, set)
      if premature then return end
      local fields = bench.cjson.decode(set)
      local red = bench.connect()
      if not red or type(fields) ~= "table" then return end
      red:init_pipeline()
      for k, v in pairs(fields) do red:hset(key, bench.cjson.encode(k), bench.cjson.encode(v)) end
      red:commit_pipeline()
      red:set_keepalive(60000, 256)
    end
  }}
{upstream_app(upstream)}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      access_by_lua_block {{
        ngx.req.clear_header("X-Session")
        local cookie = ngx.var.cookie_session
        if not cookie then return end
        local id, mac = cookie:match("^([%w_-]+)%.([%w_-]+)$")
        if not id or #id ~= 22 or #mac ~= 43 or bench.mac(id) ~= mac then return end
        local red = bench.connect()
        if not red then return ngx.exit(503) end
        local key = bench.key(id)
        red:init_pipeline()
        red:hgetall(key)
        red:pexpire(key, 86400000)
        local res = red:commit_pipeline()
        red:set_keepalive(60000, 256)
        if not res or type(res[1]) ~= "table" then return ngx.exit(503) end
        local flat, pairs_ = res[1], {{}}
        for i = 1, #flat, 2 do
          if flat[i]:sub(1, 1) == '"' then pairs_[#pairs_ + 1] = {{flat[i], flat[i + 1]}} end
        end
        if #pairs_ == 0 then return end
        table.sort(pairs_, function(a, b) return a[1] < b[1] end)
        local parts = {{}}
        for i, p in ipairs(pairs_) do parts[i] = p[1] .. ":" .. p[2] end
        ngx.req.set_header("X-Session", "{{" .. table.concat(parts, ",") .. "}}")
        ngx.ctx.key = key
      }}
      header_filter_by_lua_block {{
        local set = ngx.header["X-Session-Set"]
        if set then
          ngx.header["X-Session-Set"] = nil
          if ngx.ctx.key then ngx.timer.at(0, bench.write, ngx.ctx.key, set) end
        end
      }}
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""


def sidecar_yaml(listen: int, admin: int, upstream: int, store: str) -> str:
    return f"""listen: 127.0.0.1:{listen}
upstream: http://127.0.0.1:{upstream}
secrets: ["{SECRET}"]
{store}
cookies:
  secure: false
bypass: []
admin:
  listen: 127.0.0.1:{admin}
log:
  level: warn   # no access log, as nginx's access_log off
"""


@dataclass
class Sidecar:
    name: str
    port: int
    admin: int
    proc: subprocess.Popen
    cookie: str = ""  # one session's cookie, for the checks
    cookie_file: str = ""  # all sessions' cookies, for wrk

    def store_ops(self) -> tuple[float, float]:
        """Store loads and writes so far, from one scrape of `/metrics`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            values[name] = value
        base = "session_sidecar_store_duration_seconds_count"
        try:
            return (float(values[base + '{op="load"}']), float(values[base + '{op="apply"}']))
        except KeyError as missing:
            raise BenchError(f"{self.name}: no {missing} in /metrics") from None


def request(port: int, path: str, cookie: str | None = None, owner: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Cookie": cookie} if cookie else {}
    if owner:
        headers["X-Bench-Owner"] = json.dumps(owner)
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def login(sc: Sidecar, count: int, path: Path) -> None:
    """Create `count` sessions; their cookies go to `path`, one per line, for wrk."""
    cookies = []
    for _ in range(count):
        resp = request(sc.port, "/login")
        set_cookie = resp.getheader("Set-Cookie") or ""
        if resp.status != 200 or not set_cookie.startswith("session="):
            raise BenchError(f"{sc.name}: /login gave {resp.status} with Set-Cookie {set_cookie!r:.20}")
        cookies.append(set_cookie.split(";", 1)[0])
    path.write_text("\n".join(cookies) + "\n")
    sc.cookie, sc.cookie_file = cookies[0], str(path)


def check_lua_peer(port: int, cookie: str) -> None:
    """The Lua peer hands the app the session (the upstream answers 412 otherwise), and
    refuses a forged cookie the same way (no session: 412)."""
    if (status := request(port, "/", cookie).status) != 200:
        raise BenchError(f"nginx + Lua: GET / with a session cookie gave {status}")
    forged = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    if (status := request(port, "/", forged).status) != 412:
        raise BenchError(f"nginx + Lua: a forged cookie gave {status}, expected 412 (no session)")


def check_session_work(sc: Sidecar) -> None:
    """The upstream sees the session; instructions never reach the client."""
    resp = request(sc.port, "/echo", sc.cookie)
    seen = resp.getheader("X-Seen-Session") or ""
    if resp.status != 200 or MARKER not in seen:
        raise BenchError(f"{sc.name}: the upstream saw X-Session {seen!r}, not the session")
    for path in ("/", "/write"):
        resp = request(sc.port, path, sc.cookie)
        leaked = [k for k, _ in resp.getheaders() if k.lower().startswith("x-session")]
        if resp.status != 200 or leaked:
            raise BenchError(f"{sc.name} {path}: status {resp.status}, reserved headers {leaked}")


# --- load ----------------------------------------------------------------------------

WRK_LUA = """
-- Every row sends pre-formatted requests from a table (the same Lua work per request
-- in every row); sidecar rows cycle through many sessions, as many users would.
local reqs, i = {}, 0
init = function(args)
  local path, cookies = args[1], args[2]
  if cookies ~= nil then
    for line in io.lines(cookies) do
      reqs[#reqs + 1] = wrk.format("GET", path, { ["Cookie"] = line })
    end
  else
    reqs[1] = wrk.format("GET", path)
  end
  i = math.random(#reqs)
end
request = function()
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, " ..
    "\\"p99_us\\": %d, \\"errors\\": %d}\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


@dataclass
class Row:
    name: str
    port: int
    path: str
    cookie: str | None = None  # a file of Cookie values
    pid: int | None = None  # the proxy process whose CPU and store work is counted
    sidecar: Sidecar | None = None
    store: str | None = None  # "redis" | "memcached"
    expect_load: float = 0.0  # store loads per request the row must show
    expect_apply: float = 0.0
    header: str | None = None  # one more request header (the direct row's X-Session)
    runs: list[dict] = field(default_factory=list)


class Stores:
    def __init__(self, redis_port: int, memcached_port: int, cluster_ports: list[int], pids: dict[str, list[int]]):
        self.redis_port = redis_port
        self.memcached_port = memcached_port
        self.cluster_ports = cluster_ports
        self.pids = pids  # engine → server pids, for CPU time

    def redis(self, *args: str, port: int | None = None) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(port or self.redis_port), *args], check=True, capture_output=True, text=True
        ).stdout

    def redis_calls(self, ports: list[int] | None = None) -> dict[str, int]:
        """Command counts from `INFO commandstats`, summed over `ports` (one server by default)."""
        calls: dict[str, int] = {}
        for port in ports or [self.redis_port]:
            for line in self.redis("INFO", "commandstats", port=port).splitlines():
                if line.startswith("cmdstat_"):
                    name, rest = line[len("cmdstat_"):].split(":", 1)
                    stats = dict(kv.split("=") for kv in rest.split(","))
                    calls[name] = calls.get(name, 0) + int(stats["calls"])
        return calls

    def cpu(self, store: str | None) -> float | None:
        pids = self.pids.get(store or "")
        return sum(cpu_seconds(pid) for pid in pids) if pids else None

    def memcached_stats(self) -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", self.memcached_port), timeout=5) as s:
            s.sendall(b"stats\r\n")
            buf = b""
            while not buf.endswith(b"END\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        out = {}
        for line in buf.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STAT" and parts[2].isdigit():
                out[parts[1]] = int(parts[2])
        return out

    def counts(self, store: str | None) -> tuple[int, int]:
        """(commands, round trips) the store has served so far, from one query.

        Redis: commands include those its scripts ran; round trips are the top-level
        script calls, the only commands the sidecar sends on the request path.
        memcached: the sidecar pipelines a load's two `mg` (the session's, counted as a
        touch, and the flash's, a get) and never waits for a TTL correction (a touch);
        every other command is its own exchange, so round trips = gets + sets + deletes.
        """
        if store in ("redis", "redis-cluster"):
            calls = self.redis_calls(self.cluster_ports if store == "redis-cluster" else None)
            # The cluster client's own topology queries are not request work.
            commands = sum(n for name, n in calls.items() if not name.startswith(("info", "config", "cluster")))
            return commands, calls.get("evalsha", 0) + calls.get("eval", 0)
        if store == "redis-lua":
            # The Lua peer sends HGETALL + PEXPIRE as one pipeline, and HSETs (one
            # pipeline per write): a round trip per pipeline.
            calls = self.redis_calls()
            commands = sum(n for name, n in calls.items() if not name.startswith(("info", "config")))
            return commands, calls.get("hgetall", 0) + calls.get("hset", 0)
        if store == "memcached":
            s = self.memcached_stats()
            trips = ["cmd_get", "cmd_set", "delete_hits", "delete_misses"]
            others = ["cmd_touch", "incr_hits", "incr_misses", "decr_hits", "decr_misses"]
            return sum(s.get(k, 0) for k in trips + others), sum(s.get(k, 0) for k in trips)
        return 0, 0


def wrk(args, row: Row, duration: float, lua: Path) -> dict:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{int(duration)}s", "--timeout", "5s",
            "-s", str(lua), f"http://127.0.0.1:{row.port}{row.path}", "--", row.path]
    if row.cookie:
        argv.append(row.cookie)  # a file of Cookie values
    if row.header:
        argv[1:1] = ["-H", row.header]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise BenchError(f"wrk printed no result for {row.name}:\n{out}")


def measure(args, row: Row, stores: Stores, lua: Path) -> dict:
    before_cmds, before_trips = stores.counts(row.store)
    before_ops = row.sidecar.store_ops() if row.sidecar else (0.0, 0.0)
    before_cpu = cpu_seconds(row.pid) if row.pid else 0.0
    before_store_cpu = stores.cpu(row.store)
    result = wrk(args, row, args.duration, lua)
    cpu = cpu_seconds(row.pid) - before_cpu if row.pid else 0.0
    n = max(result["requests"], 1)
    after_store_cpu = stores.cpu(row.store)
    result["store_cpu_us"] = (
        (after_store_cpu - before_store_cpu) * 1e6 / n if after_store_cpu is not None else None)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["cpu_us"] = cpu * 1e6 / n if row.pid else None
    after_cmds, after_trips = stores.counts(row.store)
    result["store_cmds"] = (after_cmds - before_cmds) / n if row.store else None
    result["round_trips"] = None
    if row.store == "redis-lua":
        result["round_trips"] = (after_trips - before_trips) / n
    if row.sidecar:
        after = row.sidecar.store_ops()
        result["loads"] = (after[0] - before_ops[0]) / n
        result["applies"] = (after[1] - before_ops[1]) / n
        if row.store:
            result["round_trips"] = (after_trips - before_trips) / n
        # Session work must have happened on every request: only the requests in flight
        # when wrk stops (at most one per connection) reach the store uncounted by wrk.
        slack = (args.connections + 1) / n + 0.001
        for what, got, want in (("loads", result["loads"], row.expect_load),
                                ("applies", result["applies"], row.expect_apply)):
            if abs(got - want) > slack:
                raise BenchError(f"{row.name}: {got:.3f} store {what} per request, expected {want}")
    if result["errors"]:
        raise BenchError(f"{row.name}: {result['errors']} errors (non-2xx or socket) in {n} requests")
    return result


# --- what an owner costs ----------------------------------------------------------------


def owner_costs(sc: Sidecar, store: str, stores: Stores, n: int) -> list[tuple[str, float, float]]:
    """Store commands and round trips per request for the owner operations, each next to
    its unowned counterpart, measured by the store's own counters over `n` requests one
    at a time (docs/performance.md#what-an-owner-costs)."""
    tag = f"{sc.name}-{time.monotonic_ns()}"

    def per_request(what: str, calls) -> tuple[str, float, float]:
        before = stores.counts(store)
        for call in calls:
            call()
        after = stores.counts(store)
        return what, (after[0] - before[0]) / len(calls), (after[1] - before[1]) / len(calls)

    def expect(resp, what: str, cookie: bool) -> str:
        set_cookie = resp.getheader("Set-Cookie") or ""
        if resp.status != 200 or (cookie and not set_cookie.startswith("session=")):
            raise BenchError(f"{sc.name} {what}: status {resp.status}, Set-Cookie {set_cookie!r:.20}")
        return set_cookie.split(";", 1)[0]

    plain, owned = [], []
    rows = [
        per_request("login without owner (create)", [
            lambda: plain.append(expect(request(sc.port, "/login"), "login", True))] * n),
        per_request("login with owner (create + attach)", [
            (lambda i=i: owned.append(expect(request(sc.port, "/owner-login", owner=f"{tag}-{i}"),
                                             "owner login", True))) for i in range(n)]),
        per_request("read, no owner", [(lambda c=c: expect(request(sc.port, "/", c), "read", False))
                                       for c in plain]),
        per_request("read, owned", [(lambda c=c: expect(request(sc.port, "/", c), "owned read", False))
                                    for c in owned]),
        per_request("revoke an owner with 1 session", [
            (lambda i=i: expect(request(sc.port, "/owner-revoke", owner=f"{tag}-{i}"), "revoke", False))
            for i in range(n)]),
    ]
    # The revoked sessions are gone: their next read says so.
    if request(sc.port, "/", owned[0]).status != 412:
        raise BenchError(f"{sc.name}: a revoked session still loads")
    # One owner with 10 sessions, revoked in one request.
    for _ in range(10):
        expect(request(sc.port, "/owner-login", owner=f"{tag}-many"), "owner login", True)
    rows.append(per_request("revoke an owner with 10 sessions", [
        lambda: expect(request(sc.port, "/owner-revoke", owner=f"{tag}-many"), "revoke", False)]))
    return rows


# --- idle connections ----------------------------------------------------------------


def hold_idle(port: int, count: int) -> list[socket.socket]:
    """Open `count` keep-alive connections, one request each, and leave them open."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /open HTTP/1.1\r\nHost: bench\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf or len(buf.split(b"\r\n\r\n", 1)[1]) < len(BODY):
            chunk = s.recv(4096)
            if not chunk:
                raise BenchError("a keep-alive connection was closed while opening 1,000 of them")
            buf += chunk
        socks.append(s)
    return socks


# --- report --------------------------------------------------------------------------


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def num(value):
    return "–" if value is None else f"{value:.2f}"


def fmt_us(us):
    return "–" if us is None else (f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs")


def report(args, rows: list[Row], baseline: Row, extra: list[str]) -> str:
    base_rps = median(r["rps"] for r in baseline.runs)
    lines = [
        f"session-sidecar benchmark, {datetime.date.today()} · nproc {os.cpu_count()} · "
        f"{platform.machine()} · wrk -t{args.threads} -c{args.connections} -d{args.duration}s · "
        f"{args.rounds} interleaved rounds, medians",
        "",
        "| row | req/s | ratio to nginx | p50 | p99 | errors | proxy CPU/req | store CPU/req | store round trips/req "
        "| store commands/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rps = median(x["rps"] for x in r.runs)
        cmds = median(x["store_cmds"] for x in r.runs)
        lines.append(
            f"| {r.name} | {rps:,.0f} | {rps / base_rps:.2f} | {fmt_us(median(x['p50_us'] for x in r.runs))} | "
            f"{fmt_us(median(x['p99_us'] for x in r.runs))} | {sum(x['errors'] for x in r.runs)} | "
            f"{fmt_us(median(x['cpu_us'] for x in r.runs))} | {fmt_us(median(x['store_cpu_us'] for x in r.runs))} | "
            f"{num(median(x['round_trips'] for x in r.runs))} | {num(cmds)} |"
        )
    return "\n".join(lines + [""] + extra) + "\n"


# --- main ----------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/session-sidecar")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per row")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--sessions", type=int, default=1000, help="sessions per sidecar, cycled by wrk")
    ap.add_argument("--idle", type=int, default=1000, help="idle keep-alive connections for RSS")
    ap.add_argument("--only", help="comma-separated row name substrings to run (plus the baseline)")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--smoke", action="store_true",
                    help="one short round (1 s per row, 50 sessions): checks that the benchmark "
                         "and every row's session work run, as in CI; its numbers mean nothing")
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.rounds, args.warmup, args.sessions = 1, 1, 0, 50
    for tool in ("nginx", "wrk", "redis-server", "redis-cli", "memcached"):
        which(tool)
    for path, package in (("/usr/lib/nginx/modules/ngx_http_lua_module.so", "libnginx-mod-http-lua"),
                          ("/usr/share/lua/5.1/nginx/redis.lua", "lua-nginx-redis"),
                          ("/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so", "lua-cjson")):
        if not Path(path).exists():
            raise BenchError(f"{path} not found (the nginx + Lua peer): sudo apt-get install -y {package}")
    binary = Path(args.binary).resolve()
    if not binary.exists():
        raise BenchError(f"{binary} not found: run bench/run.sh (it builds it)")

    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    peers = Peers(work)
    try:
        return run(args, binary, work, peers)
    finally:
        peers.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


def start_cluster(peers: Peers, work: Path) -> list[int]:
    """A 3-master Redis Cluster without replicas, ready when every node says `cluster_state:ok`."""
    ports = []
    while len(ports) < 3:  # a node's bus listens on port + 10000
        port = free_port()
        if port <= 55535 and port not in ports:
            ports.append(port)
    for port in ports:
        peers.spawn(f"redis-cluster-{port}", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--cluster-enabled", "yes", "--cluster-config-file", str(work / f"nodes-{port}.conf"),
            "--cluster-node-timeout", "5000", "--dir", str(work)], port)
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, text=True)
    deadline = time.monotonic() + 30
    while True:
        states = [subprocess.run(["redis-cli", "-p", str(p), "CLUSTER", "INFO"], capture_output=True,
                                 text=True).stdout for p in ports]
        if all("cluster_state:ok" in st for st in states):
            return ports
        if time.monotonic() > deadline:
            raise BenchError("the Redis Cluster did not reach cluster_state:ok within 30 s")
        time.sleep(0.2)


def run(args, binary: Path, work: Path, peers: Peers) -> int:
    app, nginx_proxy = free_port(), free_port()
    redis_port, memcached_port = free_port(), free_port()
    nginx = which("nginx")
    peers.spawn("upstream", [nginx, "-p", str(work), "-c",
                             str(nginx_conf(work, "upstream", "1", upstream_block(app)))], app)
    proxy = peers.spawn("nginx-proxy", [nginx, "-p", str(work), "-c",
                                        str(nginx_conf(work, "proxy", "auto", proxy_block(nginx_proxy, app)))],
                        nginx_proxy)
    peers.spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no"], redis_port)
    peers.spawn("memcached", [which("memcached"), "-l", "127.0.0.1", "-p", str(memcached_port), "-U", "0",
                              "-m", "64"] + (["-u", "root"] if os.geteuid() == 0 else []), memcached_port)
    cluster_ports = start_cluster(peers, work)
    pids = {"redis": [peers.procs[-5].pid], "memcached": [peers.procs[-4].pid],
            "redis-cluster": [p.pid for p in peers.procs[-3:]]}
    pids["redis-lua"] = pids["redis"]
    lua_port = free_port()
    lua_proxy = peers.spawn("nginx-lua", [nginx, "-p", str(work), "-c", str(nginx_conf(
        work, "lua", "auto", lua_block(lua_port, app, redis_port), LUA_MODULES))], lua_port)
    stores = Stores(redis_port, memcached_port, cluster_ports, pids)

    nodes = ", ".join(f'"127.0.0.1:{p}"' for p in cluster_ports)
    engines = {
        "memory": "store:\n  engine: memory",
        "redis": f"store:\n  engine: redis\n  storage:\n    host: 127.0.0.1\n    port: {redis_port}",
        # The tracked session cache (store.cache); it needs a touch_after.
        "redis-cache": f"store:\n  engine: redis\n  storage:\n    host: 127.0.0.1\n    port: {redis_port}\n"
                       f"  cache:\n    max_entries: 10000\nsession:\n  touch_after: 1m",
        "redis-cluster": f"store:\n  engine: redis\n  storage:\n    cluster:\n      nodes: [{nodes}]",
        "memcached": f"store:\n  engine: memcached\n  storage:\n    servers: [\"127.0.0.1:{memcached_port}\"]",
    }
    sidecars = {}
    for engine, store in engines.items():
        port, admin = free_port(), free_port()
        cfg = work / f"sidecar-{engine}.yaml"
        cfg.write_text(sidecar_yaml(port, admin, app, store))
        proc = peers.spawn(f"sidecar-{engine}", [str(binary), "--config", str(cfg)], port)
        sc = Sidecar(engine, port, admin, proc)
        login(sc, args.sessions, work / f"cookies-{engine}.txt")
        check_session_work(sc)
        sidecars[engine] = sc

    baseline = Row("nginx proxy_pass (baseline)", nginx_proxy, "/", pid=proxy.pid)
    rows = [Row("direct to upstream", app, "/", header=f"X-Session: {SESSION}"), baseline]
    # The Lua peer reads and writes the redis sidecar's sessions (same secret, key layout).
    lua_cookies = sidecars["redis"].cookie_file
    check_lua_peer(lua_port, sidecars["redis"].cookie)
    rows.append(Row("nginx + Lua + Redis: read", lua_port, "/", lua_cookies, lua_proxy.pid, None, "redis-lua"))
    rows.append(Row("nginx + Lua + Redis: read + write", lua_port, "/write", lua_cookies, lua_proxy.pid, None,
                    "redis-lua"))
    for engine, sc in sidecars.items():
        store = {"memory": None, "redis-cache": "redis"}.get(engine, engine)
        rows.append(Row(f"sidecar {engine}: read", sc.port, "/", sc.cookie_file, sc.proc.pid, sc, store, 1, 0))
        rows.append(Row(f"sidecar {engine}: read + write", sc.port, "/write", sc.cookie_file, sc.proc.pid, sc,
                        store, 1, 1))
    sc = sidecars["memory"]
    rows.append(Row("sidecar: no cookie (pass-through)", sc.port, "/open", None, sc.proc.pid, sc))
    if args.only:
        wanted = args.only.split(",")
        rows = [r for r in rows if r is baseline or any(w in r.name for w in wanted)]

    lua = work / "report.lua"
    lua.write_text(WRK_LUA)
    if args.warmup > 0:
        for row in rows:
            wrk(args, row, args.warmup, lua)
    for rnd in range(args.rounds):
        order = rows[rnd % len(rows):] + rows[: rnd % len(rows)]
        for row in order:
            row.runs.append(measure(args, row, stores, lua))
            print(f"round {rnd + 1}/{args.rounds} {row.name}: {row.runs[-1]['rps']:,.0f} req/s", flush=True)
    for sc in sidecars.values():
        check_session_work(sc)

    extra = ["| process | RSS after the rounds | RSS holding %d idle keep-alive connections |" % args.idle,
             "|---|---:|---:|"]
    targets = [("nginx proxy_pass", nginx_proxy, proxy.pid), ("nginx + Lua + Redis", lua_port, lua_proxy.pid)] + [
        (f"sidecar {e}", sc.port, sc.proc.pid) for e, sc in sidecars.items()]
    for name, port, pid in targets:
        if args.only and not any(w in name for w in args.only.split(",")) and name != "nginx proxy_pass":
            continue
        idle = rss_kib(pid)
        socks = hold_idle(port, args.idle)
        time.sleep(0.5)
        held = rss_kib(pid)
        for s in socks:
            s.close()
        extra.append(f"| {name} | {idle / 1024:.1f} MiB | {held / 1024:.1f} MiB |")
        time.sleep(0.5)
    # After the RSS figures: the owner runs open connections of their own.
    owner_lines = ["| store | request | store commands/req | store round trips/req |", "|---|---|---:|---:|"]
    for engine, sc in sidecars.items():
        if engine in ("memory", "redis-cache") or (args.only and not any(w in f"sidecar {engine}" for w in args.only.split(","))):
            continue
        for what, cmds, trips in owner_costs(sc, engine, stores, 20 if args.smoke else 200):
            owner_lines.append(f"| {engine} | {what} | {cmds:.2f} | {trips:.2f} |")

    text = report(args, rows, baseline, extra + [""] + owner_lines)
    print()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
