"""Keep pycket users logged in across the switch: adopt a pycket session on first visit.

The sidecar cannot honour a `PYCKET_ID` cookie, but it passes that cookie (another name
than its own) to the app, and the app still has Tornado's `cookie_secret`. So for a
transition period, before pycket's sessions expire, a handler calls `adopt(self, ...)`
at the start of each request: when the request carries a valid pycket cookie, the pycket
session (and its notifications) is taken from pycket's Redis, atomically (GETDEL: one
adoption per pycket session), written to the sidecar session with ordinary instructions
(the sidecar then issues its own cookie, with a fresh id), and the pycket cookie is
cleared. Values are converted like migrate.py does (no code in the pickles runs); keys
that JSON cannot hold are dropped and returned, for logging.

Needs sidecar_session's SessionMixin/NotificationMixin on the handler, redis-py >= 4
and Redis >= 6.2 (GETDEL).
"""
import argparse
import json

from migrate import Unrepresentable, convert, unpickle

_LIMITS = argparse.Namespace(tuples_as_lists=True, max_size=8192)


def adopt(handler, sessions, notifications, cookie_name="PYCKET_ID", **cookie_args):
    """`sessions`/`notifications`: redis.Redis clients on pycket's two dbs.
    `cookie_args`: the path/domain pycket's cookie was set with (pycket.cookies).
    Returns None when there was nothing to adopt, else a list of (key, reason) dropped."""
    old = handler.get_secure_cookie(cookie_name)
    if old is None:
        return None
    handler.clear_cookie(cookie_name, **cookie_args)
    if handler.session.status == "active":  # already has a sidecar session
        return None
    dropped = []
    for client, target in ((sessions, handler.session), (notifications, handler.notifications)):
        raw = client.getdel(old)
        if raw is None:
            continue
        try:
            fields, problems = convert(unpickle(raw), _LIMITS)
        except Unrepresentable as e:
            fields, problems = {}, [("*", str(e))]
        if any(k == "*" for k, _ in problems):
            fields = {}
        dropped += problems
        for field, text in fields.items():
            target.set(json.loads(field), json.loads(text))
    return dropped
