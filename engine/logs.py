"""Log output: ``text`` (for people), ``kv`` (key=value) or ``json`` (one object per line), RAPPORT_LOG_FORMAT.

Fields a caller passes in ``extra`` (platform, kind, latency_ms, batch, ...) become keys of the kv and
json lines. Message text is never logged unless RAPPORT_LOG_TEXT=1, and then only at DEBUG.
"""
from __future__ import annotations

import json
import logging
import time

FORMATS = ("text", "kv", "json")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict:
    """The record's time, level, logger, message and extra fields."""
    out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
           "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
    out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
    if record.exc_info:
        out["exc"] = record.exc_text or logging.Formatter().formatException(record.exc_info)
    return out


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=INFO logger=rapport.engine msg="message handled" platform=telegram kind=reply ...``"""

    def format(self, record: logging.LogRecord) -> str:
        def value(v) -> str:
            text = str(v)
            return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text
        return " ".join(f"{k}={value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def setup_logging(level: int, fmt: str = "text") -> None:
    """Configure the root logger (the handler on stderr) with ``fmt``."""
    handler = logging.StreamHandler()
    handler.setFormatter({"kv": KeyValueFormatter(), "json": JsonFormatter()}.get(
        fmt, logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
