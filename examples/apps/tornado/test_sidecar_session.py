"""Unit tests of sidecar_session (no Tornado needed): python3 -m unittest test_sidecar_session"""
import json
import unittest

from sidecar_session import NotificationMixin, SessionMixin


class FakeHandler(SessionMixin, NotificationMixin):
    def __init__(self, **headers):
        self.request = type("R", (), {"headers": headers})()
        self.out = {}

    def clear_header(self, name):
        self.out.pop(name, None)

    def add_header(self, name, value):
        self.out.setdefault(name, []).append(value)


def handler(session=None, flash=None, **extra):
    h = {"X-Session": json.dumps(session or {}), "X-Session-Flash": json.dumps(flash or {})}
    return FakeHandler(**h, **extra)


class SessionTests(unittest.TestCase):
    def test_pycket_reads(self):
        h = handler({"user": "ann", "n": None}, **{"X-Session-Status": "active",
                                                  "X-Session-Owner": '"ann"'})
        s = h.session
        self.assertIs(s, h.session)
        self.assertEqual((s.get("user"), s.get("x", 7), s.status, s.owner),
                         ("ann", 7, "active", "ann"))
        self.assertIn("n", s)
        self.assertRaises(KeyError, lambda: s["n"])  # as pycket: None is "not found"
        self.assertEqual(sorted(s), ["n", "user"])
        self.assertEqual(h.out, {})  # reads write nothing

    def test_writes_accumulate_into_headers(self):
        h = handler({"visits": 2, "old": 1})
        s = h.session
        s.set("user", "zoë")
        s["t"] = (1, 2)
        s.incr("visits")
        s.incr("visits", 2)
        del s["old"]
        s.delete("gone", "old")
        self.assertEqual(json.loads(h.out["X-Session-Set"][0]), {"user": "zoë", "t": [1, 2]})
        self.assertEqual(h.out["X-Session-Set"], ['{"user":"zo\\u00eb","t":[1,2]}'])
        self.assertEqual(h.out["X-Session-Incr"], ['{"visits":3}'])
        self.assertEqual(h.out["X-Session-Delete"], ['["old","gone"]'])
        self.assertEqual((s.get("visits"), s.get("t"), "old" in s), (5, [1, 2], False))

    def test_set_then_incr_folds_and_delete_cancels(self):
        h = handler()
        h.session.set("n", 1)
        h.session.incr("n")
        h.session.set("x", 1)
        h.session.delete("x")
        self.assertEqual(h.out["X-Session-Set"], ['{"n":2}'])
        self.assertNotIn("X-Session-Incr", h.out)
        self.assertEqual(h.out["X-Session-Delete"], ['["x"]'])

    def test_refuses_what_json_cannot_hold(self):
        s = handler().session
        self.assertRaises(TypeError, s.set, "d", {1, 2})
        self.assertRaises(ValueError, s.set, "f", float("nan"))
        self.assertRaises(TypeError, s.set, "", 1)
        self.assertRaises(TypeError, s.incr, "n", 1.5)

    def test_login_logout_owner_instructions(self):
        h = handler({"user": "ann"})
        s = h.session
        s.set("x", 1)
        s.destroy()  # earlier writes go with the session; later ones start a new one
        s.set("y", 2)
        s.regenerate()
        s.set_owner("bob")
        s.revoke_owner("eve")
        s.revoke_others()
        s.set_max_age(60)
        self.assertEqual(h.out["X-Session-Destroy"], ["1"])
        self.assertEqual(h.out["X-Session-Set"], ['{"y":2}'])
        self.assertEqual(h.out["X-Session-Owner"], ['"bob"'])
        self.assertEqual(h.out["X-Session-Revoke-Owner"], ['"eve"'])
        self.assertEqual(h.out["X-Session-Max-Age"], ["60"])
        self.assertEqual((s.get("user"), s.owner), (None, "bob"))
        s.set_owner(None)
        self.assertEqual(h.out["X-Session-Owner"], ["null"])


class NotificationTests(unittest.TestCase):
    def test_read_once_per_request(self):
        h = handler(flash={"message": "hi"})
        n = h.notifications
        self.assertIn("message", n)
        self.assertEqual(n.get("message"), "hi")
        self.assertIsNone(n.get("message"))
        self.assertEqual(h.out, {})

    def test_set_and_take_back(self):
        h = handler()
        n = h.notifications
        n.set("a", "x")
        n["b"] = [1]
        self.assertEqual(h.out["X-Session-Flash-Set"], ['{"a":"x","b":[1]}'])
        self.assertEqual(n.get("a"), "x")  # set and read in one request: never delivered
        self.assertEqual(h.out["X-Session-Flash-Set"], ['{"b":[1]}'])
        n.delete("b")
        self.assertNotIn("X-Session-Flash-Set", h.out)


if __name__ == "__main__":
    unittest.main()
