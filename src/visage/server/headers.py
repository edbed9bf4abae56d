"""Security headers on every response: no framing (clickjacking), no MIME sniffing, no
referrer; the console's pages add a strict Content-Security-Policy.

The console's policy allows scripts, styles, connections and images from this server only
(plus ``blob:`` images, for the photo being shown and a person's kept photos, fetched with the
key, and the webcam's frames), no inline script or style, no plugins, no framing: a stored
name that slipped past escaping still could not run. ``/docs`` and ``/redoc`` (fastapi-offline's Swagger page, inline script) get the other
headers only.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; form-action 'self'; "
    "base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
)
COMMON = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CONSOLE_PREFIX = "/console/"


class SecurityHeaders:
    """Adds :data:`COMMON` to every HTTP response and :data:`CONSOLE_CSP` to the console's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        console = str(scope.get("path", "")).startswith(CONSOLE_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON.items():
                    headers.setdefault(name, value)
                if console:
                    headers["Content-Security-Policy"] = CONSOLE_CSP
            await send(message)

        await self.app(scope, receive, send_with_headers)
