"""The monitoring endpoint of a long-running command: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

    /healthz   200 while the process serves requests at all (liveness)
    /readyz    200 when every readiness check passes (model loaded, Redis answers, platform connected),
               else 503; the body says which check failed: {"ready": false, "checks": {"redis": false, ...}}
    /metrics   the metrics of :mod:`engine.metrics` and the process collector

Started by ``rapport telegram | discord | bots | worker`` when RAPPORT_METRICS_PORT is set.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("rapport.monitoring")

Check = Callable[[], Awaitable[bool]]
CHECK_TIMEOUT_S = 2.0


async def _passes(check: Check) -> bool:
    """The check's answer; False when it raises or takes longer than CHECK_TIMEOUT_S. A late check is
    cancelled but not waited for: redis-py can lose a cancellation, and the probe must answer anyway."""
    task = asyncio.ensure_future(check())
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a late failure is not logged as unseen
    done, _ = await asyncio.wait({task}, timeout=CHECK_TIMEOUT_S)
    if not done:
        task.cancel()
        return False
    try:
        return bool(task.result())
    except Exception:  # a failing check means "not ready", whatever the reason
        return False


class MonitoringServer:
    """Serves the three endpoints on ``host:port`` (an aiohttp server in the bot's event loop)."""

    def __init__(self, port: int, checks: dict[str, Check], host: str = "0.0.0.0") -> None:
        self.port, self.host, self.checks = port, host, checks
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; raises OSError (with the port in its message) when the port is taken."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, f"RAPPORT_METRICS_PORT {self.port} is taken or not allowed ({exc.strerror}); "
                                     "choose another port") from exc
        log.info("monitoring on %s:%d (/metrics /healthz /readyz)", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "MonitoringServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        names = list(self.checks)
        results = dict(zip(names, await asyncio.gather(*(_passes(self.checks[n]) for n in names))))
        ready = all(results.values())
        return web.Response(text=json.dumps({"ready": ready, "checks": results}) + "\n",
                            status=200 if ready else 503, content_type="application/json")
