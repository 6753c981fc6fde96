"""``sched ui``: a web dashboard of the queue, served by the app itself (Starlette and uvicorn, the ``web``
extra), with server-rendered pages and no build step. Off loopback it refuses to start without a token."""

from __future__ import annotations

import ipaddress

from pgsched.errors import InvalidInput, SchedError


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token: anyone who reaches the port could act on jobs."""
    if not is_loopback(host) and not token:
        raise InvalidInput(
            f"serving on {host} needs an access token (--token or SCHED_UI_TOKEN); only loopback goes without one"
        )


def serve(
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    read_only: bool = False,
    token: str | None = None,
    stale_after_s: float = 30.0,
) -> None:
    """Serve the dashboard until interrupted."""
    check_binding(host, token)
    try:
        import uvicorn

        from pgsched.web.app import create_app
    except ImportError as exc:
        raise SchedError(f"sched ui needs the web extra ({exc.name} is missing): pip install 'pgsched[web]'") from None
    app = create_app(dsn, read_only=read_only, token=token or None, stale_after_s=stale_after_s)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
