"""Property test: any text through the whole engine gives a reply to the right user, never a crash."""
import asyncio

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from engine.config import Settings
from engine.engine import Engine
from engine.messages import IncomingMessage


@pytest.fixture(scope="module")
def loop_and_engine(redis_server, replier, tmp_path_factory):
    loop = asyncio.new_event_loop()
    cfg = Settings(redis_url=redis_server.url, key_prefix="hypo", data_dir=tmp_path_factory.mktemp("hypo"),
                   rate_limit_per_minute=10_000)
    engine = Engine.from_settings(cfg, replier=replier)
    loop.run_until_complete(engine.start())
    yield loop, engine
    loop.run_until_complete(engine.stop())
    loop.close()


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), user=st.sampled_from(["p1", "p2", "p3"]))
def test_any_text_gets_a_reply(loop_and_engine, text, user):
    loop, engine = loop_and_engine
    out = loop.run_until_complete(engine.handle(IncomingMessage("fake", user, user, text)))
    assert out.user_id == user and out.chat_id == user
    assert isinstance(out.text, str) and out.text.strip()
    assert out.kind in ("reply", "command", "notice", "safety")  # e.g. "P1G" reads as an insult: a safe reply
