#!/usr/bin/env python3
"""Copy pycket's Redis sessions and notifications into session-sidecar's layout.

pycket (0.3.0) keeps each session as a pickled dict under its bare session id (a
uuid4 string, the value of the signed `PYCKET_ID` cookie) in db_sessions, and the
notifications of that id as another pickled dict under the same key in db_notifications.
The sidecar keeps compact JSON in hashes named by base64url(SHA-256(id)) of its own ids
(README "Redis key layout"). pycket's ids cannot be reused: the sidecar's cookie is
`<id>.<mac>` with a 16-byte id. So every pycket session becomes a *new* sidecar session
with a fresh random id, and with `--write` the script prints one JSON line per migrated
session on stdout, `{"pycket_id": OLD, "session_id": NEW, "cookie": "NEW.MAC"}` (the
cookie only when the signing secret is given). These are bearer credentials: keep that
output private. Browsers cannot be handed them through the sidecar (it never lets an app
set its cookie); see docs/migrating-from-pycket.md for what to do about browser users.

Safe by default: without `--write` it only reads and reports (a dry run). pycket's data
is never changed unless `--delete-old`. Pickles are loaded with every class or function
they name replaced by an inert placeholder, so no code in them runs: a session holding a Python object (datetime, set, a class ...)
is reported and skipped, as are values JSON cannot hold (non-string keys, NaN, bytes,
tuples unless `--tuples-as-lists`) and sessions over the sidecar's limits. A session
with any such value is skipped whole unless `--partial` (then just those keys go).

The report (stderr) names skipped keys, never values, and shows only the first 8
characters of session ids.
"""
import argparse
import base64
import hashlib
import hmac
import io
import json
import os
import pickle
import re
import secrets
import sys
import urllib.parse

import redis

UUID4 = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MAX_KEY_BYTES = 256
MAX_DEPTH = 32  # containers, the session object itself being level 1
RESERVED_KEY = "$serde_json::private::Number"  # refused by the sidecar


class Unrepresentable(Exception):
    pass


class _Opaque:
    """Stands for any class or function a pickle names: nothing is imported or run."""

    origin = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __setitem__(self, key, value):
        pass


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        return type(name, (_Opaque,), {"origin": f"{module}.{name}"})

    def persistent_load(self, pid):
        raise Unrepresentable("a persistent id")


def unpickle(raw):
    # encoding: Python 2 pickles (pycket ran on 2.7) hold `str` as bytes.
    try:
        return _NoGlobals(io.BytesIO(raw), encoding="utf-8").load()
    except Unrepresentable:
        raise
    except Exception as e:  # noqa: BLE001 - any undecodable pickle is reported
        raise Unrepresentable(f"not a readable pickle ({type(e).__name__})") from None


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(secret, cookie_name, sid):
    """The sidecar's cookie value (src/cookie.rs, docs/protocol.md §6.1)."""
    mac = hmac.new(secret.encode(), f"{cookie_name}|{sid}".encode(), hashlib.sha256)
    return f"{sid}.{b64(mac.digest())}"


def to_json(value, tuples_as_lists, depth=2):
    """`value` as JSON data the sidecar accepts, or Unrepresentable."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise Unrepresentable("NaN or infinity")
        return value
    if isinstance(value, (list, tuple, dict)):
        if depth > MAX_DEPTH:
            raise Unrepresentable(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, tuple) and not tuples_as_lists:
            raise Unrepresentable("a tuple (use --tuples-as-lists)")
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, str):
                    raise Unrepresentable(f"a dict with a {type(k).__name__} key")
            return {k: to_json(v, tuples_as_lists, depth + 1) for k, v in value.items()}
        return [to_json(v, tuples_as_lists, depth + 1) for v in value]
    if isinstance(value, _Opaque):
        raise Unrepresentable(f"a Python object ({value.origin})")
    raise Unrepresentable(f"a {type(value).__name__}")


def dumps(value):
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def convert(data, args):
    """pycket dict -> ({field: json text}, [(key, reason)])."""
    if not isinstance(data, dict):
        return {}, [("*", f"not a dict but a {type(data).__name__}")]
    fields, problems = {}, []
    for key, value in data.items():
        try:
            if not isinstance(key, str):
                raise Unrepresentable(f"a {type(key).__name__} key")
            if not key or len(key.encode()) > MAX_KEY_BYTES or key == RESERVED_KEY:
                raise Unrepresentable("a key that is empty, over 256 bytes or reserved")
            fields[dumps(key)] = dumps(to_json(value, args.tuples_as_lists))
        except Unrepresentable as e:
            problems.append((key if isinstance(key, str) else repr(key), str(e)))
    size = 2 + sum(len(f) + 1 + len(v) for f, v in fields.items()) + max(len(fields) - 1, 0)
    if size > args.max_size:
        problems.append(("*", f"{size} bytes encoded, over --max-size {args.max_size}"))
    return fields, problems


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", default="redis://127.0.0.1:6379",
                   help="pycket's Redis, as a URL (default %(default)s)")
    p.add_argument("--db-sessions", type=int, default=0, help="pycket's db_sessions (0)")
    p.add_argument("--db-notifications", type=int, default=1,
                   help="pycket's db_notifications (1)")
    p.add_argument("--to", help="the sidecar's Redis URL (default: --from)")
    p.add_argument("--to-db-sessions", type=int, help="sidecar db_sessions (default: same)")
    p.add_argument("--to-db-notifications", type=int,
                   help="sidecar db_notifications (default: same)")
    p.add_argument("--key-prefix", default="session:", help="store.key_prefix (%(default)s)")
    p.add_argument("--cookie-name", default="session", help="cookies.name (%(default)s)")
    p.add_argument("--secret", default=os.environ.get("SESSION_SECRET"),
                   help="the sidecar's first secret, to print cookie values "
                        "(default: $SESSION_SECRET; prefer it: argv is visible to ps)")
    p.add_argument("--ttl", type=int, default=86400,
                   help="session.ttl in seconds, the most a migrated session lives "
                        "before its first use (%(default)s; pycket's own TTL is kept "
                        "when shorter)")
    p.add_argument("--max-size", type=int, default=8192, help="session.max_size in bytes")
    p.add_argument("--partial", action="store_true",
                   help="migrate the representable keys of a session with others")
    p.add_argument("--tuples-as-lists", action="store_true")
    p.add_argument("--write", action="store_true", help="write (default: a dry run)")
    p.add_argument("--delete-old", action="store_true",
                   help="with --write: delete each pycket session once copied")
    args = p.parse_args(argv)
    if args.secret is not None and len(args.secret.encode()) < 32:
        p.error("the secret must be at least 32 bytes, like the sidecar's")
    if args.delete_old and not args.write:
        p.error("--delete-old needs --write")
    for url in filter(None, (args.source, args.to)):
        parts = urllib.parse.urlsplit(url)
        if parts.path not in ("", "/") or "db=" in parts.query:
            p.error(f"give databases with --db-*/--to-db-*, not in the URL: {url}")
    if args.ttl < 1:
        p.error("--ttl must be positive")
    return args


def scan_ids(r):
    return {k for k in r.scan_iter(count=1000) if UUID4.match(k) and r.type(k) == b"string"}


def main(argv=None):
    args = parse_args(argv)
    src_s = redis.Redis.from_url(args.source, db=args.db_sessions)
    src_n = redis.Redis.from_url(args.source, db=args.db_notifications)
    dst_url = args.to or args.source
    dst_s = redis.Redis.from_url(dst_url, db=args.to_db_sessions
                                 if args.to_db_sessions is not None else args.db_sessions)
    dst_n = redis.Redis.from_url(dst_url, db=args.to_db_notifications
                                 if args.to_db_notifications is not None
                                 else args.db_notifications)

    def report(msg):
        print(msg, file=sys.stderr)

    ids = sorted(scan_ids(src_s) | scan_ids(src_n))
    done = skipped = 0
    for old in ids:
        short = old[:8].decode()
        raw_s, ttl_s = src_s.get(old), src_s.pttl(old)
        raw_n, ttl_n = src_n.get(old), src_n.pttl(old)
        parts, problems = {}, []
        for name, raw in (("data", raw_s), ("flash", raw_n)):
            if raw is None:
                parts[name] = {}
                continue
            try:
                parts[name], probs = convert(unpickle(raw), args)
            except Unrepresentable as e:
                parts[name], probs = {}, [("*", str(e))]
            problems += [(name, k, why) for k, why in probs]
        for name, key, why in problems:
            report(f"{short}…: {name} key {key!r}: {why}")
        whole = any(k == "*" for _, k, _ in problems)
        if not parts["data"] and not parts["flash"] or whole or problems and not args.partial:
            skipped += 1
            report(f"{short}…: skipped" + (" (empty)" if not problems else ""))
            continue
        # pycket's remaining TTL (a day from the last write), at most the sidecar's ttl.
        ttls = [t for t in (ttl_s, ttl_n) if t and t > 0]
        ttl_ms = min([args.ttl * 1000] + ttls[:1])
        done += 1
        if not args.write:
            continue
        sid = b64(secrets.token_bytes(16))
        key = f"{args.key_prefix}{{{b64(hashlib.sha256(sid.encode()).digest())}}}"
        secs, micros = dst_s.time()
        created = str(secs * 1000 + micros // 1000)
        if parts["flash"]:  # first: the session hash is what makes it live
            dst_n.pipeline().hset(key + ":flash", mapping=parts["flash"]) \
                .pexpire(key + ":flash", ttl_ms).execute()
        dst_s.pipeline().hset(key, mapping={**parts["data"], "created": created}) \
            .pexpire(key, ttl_ms).execute()
        if args.delete_old:
            src_s.delete(old)
            src_n.delete(old)
        line = {"pycket_id": old.decode(), "session_id": sid}
        if args.secret:
            line["cookie"] = sign(args.secret, args.cookie_name, sid)
        print(json.dumps(line), flush=True)
    verb = "migrated" if args.write else "would migrate (dry run: add --write)"
    report(f"pycket sessions found: {len(ids)}; {verb}: {done}; skipped: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
