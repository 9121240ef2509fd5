"""pycket's SessionMixin and NotificationMixin over session-sidecar's headers.

A pycket app changes one import:

    from pycket.session import SessionMixin            # before
    from pycket.notification import NotificationMixin
    from sidecar_session import SessionMixin, NotificationMixin   # after

Reads come from the request headers the sidecar injects (`X-Session`, `X-Session-Flash`);
changes accumulate per request and are written into the response's instruction headers
(`X-Session-Set`, `X-Session-Delete`, ...) as they are made, so they leave with the
response whatever the handler's base-class order. Values must be JSON-representable
(pycket pickled them): `set` raises TypeError/ValueError at once otherwise.

Beyond pycket: `incr`, `regenerate`, `destroy`, `set_owner`, `revoke_others`,
`revoke_owner`, `set_max_age`, and the `status` / `owner` of the loaded session.
See docs/migrating-from-pycket.md.
"""
import json

PREFIX = "X-Session"  # the sidecar's headers.prefix


def _dumps(value):
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _check_key(name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"session keys are non-empty strings, not {name!r}")


def _object(pairs):
    """A JSON object from already-encoded values."""
    return "{" + ",".join(f"{_dumps(k)}:{v}" for k, v in pairs.items()) + "}"


class _Manager:
    def __init__(self, handler):
        self.handler = handler

    def _header(self, suffix, default=None):
        return self.handler.request.headers.get(f"{PREFIX}{suffix}", default)

    def _put(self, suffix, *values):
        """Replace the response header PREFIX+suffix by `values` (none: remove it)."""
        name = PREFIX + suffix
        self.handler.clear_header(name)
        for value in values:
            self.handler.add_header(name, value)

    # pycket's read-side API, on top of get().
    def keys(self):
        return self._view().keys()

    def iterkeys(self):
        return iter(list(self._view()))

    __iter__ = iterkeys

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:  # as pycket: a stored None is "not found" too
            raise KeyError(f"{key} not found in session")
        return value

    def __setitem__(self, key, value):
        self.set(key, value)

    def __delitem__(self, key):
        self.delete(key)

    def __contains__(self, key):
        return key in self._view()


class SessionManager(_Manager):
    """`self.session`: pycket's SessionManager API, persisted by the sidecar."""

    def __init__(self, handler):
        super().__init__(handler)
        self._data = json.loads(self._header("", "{}"))
        self._sets, self._incrs, self._deletes = {}, {}, []
        self._destroy = self._regenerate = self._revoke_others = False
        self._owner, self._revoke, self._max_age = (), [], None

    def _view(self):
        return self._data

    @property
    def status(self):
        """none | active | expired | invalid | unavailable (docs/protocol.md §4.2)."""
        return self._header("-Status", "none")

    @property
    def owner(self):
        """The owner of the loaded session (or the one set in this request), or None."""
        if self._owner:
            return self._owner[0]
        raw = self._header("-Owner")
        return None if raw is None else json.loads(raw)

    def get(self, name, default=None):
        return self._data.get(name, default)

    def set(self, name, value):
        _check_key(name)
        text = _dumps(value)
        self._data[name] = json.loads(text)  # what later requests will see
        self._sets[name] = text
        self._incrs.pop(name, None)
        self._emit()

    def incr(self, name, amount=1):
        """Atomic add (missing = 0); the stored value must be an integer."""
        _check_key(name)
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError("incr amounts are integers")
        if name in self._sets:  # set earlier in this request: fold into the set value
            self.set(name, json.loads(self._sets[name]) + amount)
            return
        self._incrs[name] = self._incrs.get(name, 0) + amount
        current = self._data.get(name, 0)
        if isinstance(current, int):
            self._data[name] = current + amount
        self._emit()

    def delete(self, *names):
        for name in names:
            _check_key(name)
            self._data.pop(name, None)
            self._sets.pop(name, None)
            self._incrs.pop(name, None)
            if name not in self._deletes:
                self._deletes.append(name)
        self._emit()

    def regenerate(self):
        """A new session id, same data: call it on login (session fixation)."""
        self._regenerate = True
        self._emit()

    def destroy(self):
        """Log out: delete the session and its pending notifications, clear the cookie.
        Writes made after this go to a fresh session."""
        self._data, self._sets, self._incrs, self._deletes = {}, {}, {}, []
        self._regenerate, self._owner = False, ()
        self._destroy = True
        self._emit()

    def set_owner(self, owner):
        """Attach the session to `owner` (a user id string); None detaches."""
        self._owner = (owner,)
        self._emit()

    def revoke_others(self):
        """Destroy the other sessions of this session's owner."""
        self._revoke_others = True
        self._emit()

    def revoke_owner(self, owner):
        """Destroy every session of `owner` (this one too, if it is one of them)."""
        self._revoke.append(owner)
        self._emit()

    def set_max_age(self, seconds):
        """"Remember me": idle lifetime and persistent cookie of `seconds`."""
        self._max_age = int(seconds)
        self._emit()

    def _emit(self):
        flag = ("1",)
        self._put("-Destroy", *flag * self._destroy)
        self._put("-Regenerate", *flag * self._regenerate)
        self._put("-Revoke-Owner", *map(_dumps, self._revoke))
        self._put("-Revoke-Others", *flag * self._revoke_others)
        self._put("-Owner", *map(_dumps, self._owner))
        self._put("-Delete", *[_dumps(self._deletes)] * bool(self._deletes))
        self._put("-Set", *[_object(self._sets)] * bool(self._sets))
        self._put("-Incr", *[_dumps(self._incrs)] * bool(self._incrs))
        self._put("-Max-Age", *[str(self._max_age)] * (self._max_age is not None))


class NotificationManager(_Manager):
    """`self.notifications`: read-once messages (pycket's NotificationManager API).

    The sidecar delivers a notification with the next request that loads the session,
    read or not; `get` returns it once per request, as pycket did."""

    def __init__(self, handler):
        super().__init__(handler)
        self._delivered = json.loads(self._header("-Flash", "{}"))
        self._pending = {}

    def _view(self):
        return {**self._delivered, **self._pending}

    def get(self, name, default=None):
        # Set in this very request (pycket would find it in the store): take it back.
        if name in self._pending:
            value = json.loads(self._pending.pop(name))
            self._emit()
            return value
        return self._delivered.pop(name, default)

    def set(self, name, value):
        _check_key(name)
        self._pending[name] = _dumps(value)
        self._emit()

    def delete(self, *names):
        for name in names:
            self._delivered.pop(name, None)
            self._pending.pop(name, None)
        self._emit()

    def _emit(self):
        self._put("-Flash-Set", *[_object(self._pending)] * bool(self._pending))


class SessionMixin:
    """Mix into a tornado.web.RequestHandler (either order) for `self.session`."""

    @property
    def session(self):
        if not hasattr(self, "_sidecar_session"):
            self._sidecar_session = SessionManager(self)
        return self._sidecar_session


class NotificationMixin:
    """Mix into a tornado.web.RequestHandler (either order) for `self.notifications`."""

    @property
    def notifications(self):
        if not hasattr(self, "_sidecar_notifications"):
            self._sidecar_notifications = NotificationManager(self)
        return self._sidecar_notifications
