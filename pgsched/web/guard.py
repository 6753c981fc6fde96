"""What stands between the network and the dashboard's actions: the access token (required off loopback), the
per-session token that every POST must carry (cross-site request forgery), and headers that keep the pages
out of frames and other sites' reach."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

SESSION_COOKIE = "sched_session"
TOKEN_COOKIE = "sched_token"

# No script from anywhere but the app itself, no frames (a confirmation button in a hidden frame is a click
# someone else chose), no referrer to other sites (the access token may be in a URL once).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Guard(BaseHTTPMiddleware):
    """Checks the access token, gives each browser a session, and refuses a POST without its session's token."""

    def __init__(self, app, *, token: str | None, secret: bytes) -> None:  # type: ignore[no-untyped-def]
        super().__init__(app)
        self.token = token
        self.secret = secret

    def csrf_token(self, session: str) -> str:
        """The token a session's forms carry: derived from the session with the server's secret, so a cookie
        planted by another site cannot come with a matching form field."""
        return hmac.new(self.secret, b"csrf:" + session.encode(), hashlib.sha256).hexdigest()

    def _token_cookie(self) -> str:
        return hmac.new(self.secret, b"token:" + (self.token or "").encode(), hashlib.sha256).hexdigest()

    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), self.token.encode()):
            return True
        return hmac.compare_digest(request.cookies.get(TOKEN_COOKIE, "").encode(), self._token_cookie().encode())

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await self._guarded(request, call_next)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _guarded(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.query_params.get("token")
        if self.token is not None and given is not None:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return PlainTextResponse("wrong token\n", status_code=401)
            # Trade the token in the address for a cookie, and drop it from the address bar and history.
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response: Response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self._token_cookie(), httponly=True, samesite="strict")
            return response
        if not self._authorised(request):
            return HTMLResponse(
                "<!doctype html><title>sched: token needed</title><p>This dashboard needs its access token: "
                "open it as <code>/?token=TOKEN</code> (the <code>--token</code> or <code>SCHED_UI_TOKEN</code> "
                "it was started with).</p>\n",
                status_code=401,
            )
        session = request.cookies.get(SESSION_COOKIE)
        fresh = session is None or len(session) != 43
        if fresh:
            session = secrets.token_urlsafe(32)
        request.state.csrf = self.csrf_token(session)  # type: ignore[arg-type]
        if request.method == "POST" and (fresh or not await self._csrf_ok(request)):
            return PlainTextResponse(
                "refused: this form did not come from this dashboard (missing or wrong session token); "
                "reload the page and try again\n",
                status_code=403,
            )
        response = await call_next(request)
        if fresh:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")  # type: ignore[arg-type]
        return response

    async def _csrf_ok(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is not None and origin not in (f"{request.url.scheme}://{request.url.netloc}", "null"):
            return False
        form = await request.form()
        # The body is read once: the action that follows finds the form here.
        request.state.form = form
        given = form.get("csrf")
        return isinstance(given, str) and hmac.compare_digest(given.encode(), request.state.csrf.encode())
