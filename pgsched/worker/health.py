"""A small HTTP server on the worker's own event loop: ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from loguru import logger

from pgsched.errors import InvalidInput

Health = Callable[[], tuple[bool, dict[str, Any]]]


class Metrics(Protocol):
    def render(self) -> bytes: ...


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def start_health_server(health: Health, metrics: Metrics | None, host: str, port: int) -> asyncio.Server:
    """Serve ``health()`` (whether the worker is healthy, and the facts behind the answer) and the metrics on
    ``host:port``; answering at all shows that the loop is alive."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            status, content_type, body = _respond(health, metrics, method, path)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(handle, host, port)
    except OSError as exc:
        raise InvalidInput(f"cannot serve health on {host}:{port}: {exc.strerror}") from None
    logger.info("health and metrics on http://{}:{}/healthz and /metrics", host, port)
    return server


def _respond(health: Health, metrics: Metrics | None, method: str, path: str) -> tuple[int, str, bytes]:
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"method not allowed\n"
    if path == "/healthz":
        healthy, body = health()
        return (200 if healthy else 503), "application/json", json.dumps(body).encode() + b"\n"
    if path == "/metrics" and metrics is not None:
        return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()
    return 404, "text/plain", b"not found\n"
