"""The examples' contract (examples/README.md) in Flask, with no session code of its own.

The session arrives in request headers injected by session-sidecar and is changed with
response headers. Flask's own session (a cookie named `session`, which the sidecar
would remove) is not used.
"""
import json
import os

from flask import Flask, Response, abort, redirect, request

app = Flask(__name__)


def dumps(value):
    """Compact, ASCII-only JSON (non-ASCII as \\uXXXX): always a valid header value."""
    return json.dumps(value, separators=(",", ":"))


def header_json(name):
    return json.loads(request.headers.get(name, "{}"))


def see_other(**instructions):
    """A 303 to / carrying session instructions: X-Session-<Name>: <JSON>."""
    resp = redirect("/", 303)
    for name, value in instructions.items():
        resp.headers["X-Session-" + name.replace("_", "-")] = dumps(value)
    return resp


@app.get("/")
def index():
    session, flash = header_json("X-Session"), header_json("X-Session-Flash")
    body = (
        f"status: {request.headers.get('X-Session-Status', 'none')}\n"
        f"user: {session.get('user', 'anonymous')}\n"
        f"visits: {session.get('visits', 0) + 1}\n"
        f"flash: {flash.get('message', '-')}\n"
    )
    resp = Response(body, content_type="text/plain; charset=utf-8")
    resp.headers["X-Session-Incr"] = dumps({"visits": 1})
    return resp


@app.post("/login")
def login():
    user = request.form.get("user", "")
    if not user:
        abort(400)
    return see_other(Regenerate=1, Owner=user, Set={"user": user},
                     Flash_Set={"message": f"welcome {user}"})


@app.post("/logout")
def logout():
    return see_other(Destroy=1, Flash_Set={"message": "logged out"})


@app.post("/sign-out-others")
def sign_out_others():
    return see_other(Revoke_Others=1, Flash_Set={"message": "other devices signed out"})


@app.errorhandler(405)
def not_found(_):
    return Response("not found\n", 404, content_type="text/plain; charset=utf-8")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("APP_PORT", "8000")))
