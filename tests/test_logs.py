"""Structured logs: one line per handled message (platform, kind, latency, batch), never the text."""
import json
import logging
from dataclasses import replace

from bots.fake import FakeAdapter
from engine.engine import Engine
from engine.logs import JsonFormatter, KeyValueFormatter


def record(msg: str, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("rapport.engine", logging.INFO, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_key_value_and_json_lines():
    rec = record("message handled", platform="telegram", kind="reply", latency_ms=12.5, batch=3)
    line = KeyValueFormatter().format(rec)
    assert 'level=INFO logger=rapport.engine msg="message handled" platform=telegram kind=reply' in line
    assert line.endswith("latency_ms=12.5 batch=3") and "\n" not in line
    data = json.loads(JsonFormatter().format(rec))
    assert data["msg"] == "message handled" and data["kind"] == "reply" and data["batch"] == 3
    assert data["ts"].endswith("Z")


async def test_one_line_per_message_and_no_text_unless_asked(settings, replier, caplog):
    caplog.set_level(logging.DEBUG, logger="rapport.engine")
    async with Engine.from_settings(settings, replier=replier) as engine:
        bot = FakeAdapter(engine)
        await bot.send("logs-user", "my cat is called Marzipan")
        await bot.send("logs-user", "/help")
    handled = [r for r in caplog.records if r.getMessage() == "message handled"]
    assert [(r.platform, r.kind) for r in handled] == [("fake", "reply"), ("fake", "command")]
    assert handled[0].batch == 1 and handled[0].latency_ms > 0 and handled[1].batch is None
    assert "Marzipan" not in caplog.text and "logs-user" not in caplog.text
    caplog.clear()
    async with Engine.from_settings(replace(settings, log_text=True), replier=replier) as engine:
        await FakeAdapter(engine).send("logs-user", "my cat is called Marzipan")
    assert "Marzipan" in " ".join(str(getattr(r, "text", "")) for r in caplog.records if r.levelno == logging.DEBUG)
