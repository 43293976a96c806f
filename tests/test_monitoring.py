"""/metrics, /healthz and /readyz over real HTTP, with the real engine and a real Redis server."""
import asyncio
import json
import socket
from dataclasses import replace

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bots.fake import FakeAdapter
from engine.engine import Engine
from engine.monitoring import MonitoringServer
from engine.state.redis_server import EmbeddedRedis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_health_readiness_checks_and_a_taken_port():
    async def yes():
        return True

    async def no():
        return False

    async def broken():
        raise RuntimeError("down")

    async def hangs():
        await asyncio.sleep(60)

    port = free_port()
    async with MonitoringServer(port, {"a": yes}, host="127.0.0.1") as server:
        assert await get(port, "/healthz") == (200, "ok\n")
        status, body = await get(port, "/readyz")
        assert status == 200 and json.loads(body) == {"ready": True, "checks": {"a": True}}
        server.checks = {"a": yes, "b": no, "c": broken, "d": hangs}
        status, body = await get(port, "/readyz")
        assert status == 503 and json.loads(body)["checks"] == {"a": True, "b": False, "c": False, "d": False}
        status, body = await get(port, "/metrics")
        assert status == 200 and "rapport_messages_received_total" in body and "process_resident_memory_bytes" in body
        with pytest.raises(OSError, match=f"RAPPORT_METRICS_PORT {port} is taken"):
            await MonitoringServer(port, {}, host="127.0.0.1").start()


async def test_metrics_count_what_the_engine_did_and_hold_no_user_data(settings, replier):
    port = free_port()
    async with Engine.from_settings(settings, replier=replier) as engine, \
            MonitoringServer(port, {"engine": engine.ready}, host="127.0.0.1"):
        before = samples((await get(port, "/metrics"))[1])
        bot = FakeAdapter(engine)
        for text in ("my name is Zuleika and I love rowing", "what is my name?", "/help", "tell me a story"):
            await bot.send("metrics-user-42", text)
        assert (await get(port, "/readyz"))[0] == 200
        status, text = await get(port, "/metrics")
    after = samples(text)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert status == 200
    assert grew("rapport_messages_received_total", platform="fake") == 4
    assert grew("rapport_messages_answered_total", platform="fake", kind="reply") == 2
    assert grew("rapport_messages_answered_total", platform="fake", kind="memory") == 1
    assert grew("rapport_messages_answered_total", platform="fake", kind="command") == 1
    assert grew("rapport_reply_latency_seconds_count", stage="end_to_end") == 3
    assert grew("rapport_reply_latency_seconds_count", stage="model") >= 1
    assert grew("rapport_batch_size_count") >= 1 and grew("rapport_candidates_per_reply_count") >= 2
    assert grew("rapport_decode_rows_count") >= 2 and grew("rapport_redis_roundtrip_seconds_count") >= 1
    assert "Zuleika" not in text and "metrics-user-42" not in text and "rowing" not in text


async def test_readyz_is_false_while_redis_is_down_and_true_again_after(tmp_path, settings, replier):
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    port = free_port()
    try:
        async with Engine.from_settings(replace(settings, redis_url=server.url), replier=replier) as engine, \
                MonitoringServer(port, {"engine": engine.ready}, host="127.0.0.1"):
            assert (await get(port, "/readyz"))[0] == 200
            server.stop()
            status, body = await get(port, "/readyz")
            assert status == 503 and json.loads(body)["checks"] == {"engine": False}
            assert (await get(port, "/healthz"))[0] == 200  # alive, just not ready
            server.start()
            for _ in range(50):
                if (await get(port, "/readyz"))[0] == 200:
                    break
                await asyncio.sleep(0.2)
            assert (await get(port, "/readyz"))[0] == 200
    finally:
        server.stop()
