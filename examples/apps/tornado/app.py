"""The examples' contract (examples/README.md) in Tornado, written the pycket way.

Sessions and notifications go through sidecar_session's SessionMixin and
NotificationMixin (pycket's API over session-sidecar's headers): this app holds no
session code, no cookie secret and no store connection.
"""
import asyncio
import os

import tornado.web

from sidecar_session import NotificationMixin, SessionMixin


class Handler(SessionMixin, NotificationMixin, tornado.web.RequestHandler):
    def write_error(self, status_code, **kwargs):
        if status_code == 405:  # the contract: anything but its routes is a 404
            self.set_status(404)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{self.get_status()} {self._reason}\n")

    def see_other(self):
        self.redirect("/", status=303)


class Index(Handler):
    def get(self):
        visits = self.session.get("visits", 0) + 1
        self.session.incr("visits")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.write(
            f"status: {self.session.status}\n"
            f"user: {self.session.get('user', 'anonymous')}\n"
            f"visits: {visits}\n"
            f"flash: {self.notifications.get('message', '-')}\n"
        )


class Login(Handler):
    def post(self):
        user = self.get_body_argument("user", "")
        if not user:
            raise tornado.web.HTTPError(400)
        self.session.regenerate()
        self.session.set_owner(user)
        self.session.set("user", user)
        self.notifications.set("message", f"welcome {user}")
        self.see_other()


class Logout(Handler):
    def post(self):
        self.session.destroy()
        self.notifications.set("message", "logged out")
        self.see_other()


class SignOutOthers(Handler):
    def post(self):
        self.session.revoke_others()
        self.notifications.set("message", "other devices signed out")
        self.see_other()


class NotFound(Handler):
    def prepare(self):
        raise tornado.web.HTTPError(404)


async def main():
    app = tornado.web.Application(
        [("/", Index), ("/login", Login), ("/logout", Logout),
         ("/sign-out-others", SignOutOthers)],
        default_handler_class=NotFound,
    )
    app.listen(int(os.environ.get("APP_PORT", "8000")), address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
