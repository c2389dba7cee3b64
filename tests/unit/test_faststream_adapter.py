"""What shared/service.py's ServiceApp assumes of FastStream, pinned: if an upgrade gives AsgiFastStream a
mount (prefix routing) or a way to start the brokers later, these fail, and the override can go."""

from __future__ import annotations

import asyncio

from faststream.asgi import AsgiFastStream

from shared.service import ServiceApp


def _get(app, path: str) -> int:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [], "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": "",
             "http_version": "1.1", "asgi": {"version": "3.0"}}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_asgi_routes_match_whole_paths_only() -> None:
    """Why ServiceApp.__call__ hands HTTP to FastAPI: /v1/cancellations/{request_id} cannot be an asgi_route."""
    app = AsgiFastStream(asgi_routes=[("/v1/cancellations", _ok)])
    assert _get(app, "/v1/cancellations") == 200
    assert _get(app, "/v1/cancellations/R-1") == 404


def test_the_only_private_member_overridden_is_the_broker_start() -> None:
    """FastStream starts the brokers in `_start_broker`, right after the on_startup hooks (which hold up the
    ASGI lifespan, so /health would not answer while they wait): no public hook starts them later."""
    private = sorted(n for n in vars(ServiceApp) if n.startswith("_") and not n.startswith("__")
                     and hasattr(AsgiFastStream, n))
    assert private == ["_start_broker"]
