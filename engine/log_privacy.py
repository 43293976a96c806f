"""Keep secrets and message text out of the logs.

:func:`protect_logs` makes every log record pass through :func:`redact` when it is created (so every
handler, file or console, sees the redacted text) and sets the HTTP client loggers (httpx, httpcore),
which log request URLs that hold the Telegram token, to WARNING.
"""
from __future__ import annotations

import logging
import re

# Telegram bot tokens (123456:ABC-...), Discord bot tokens (three base64url parts), and "bot<token>" URLs.
_TOKEN_SHAPES = re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b|\b[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}\b")
REDACTED = "[redacted]"
_secrets: set[str] = set()
_installed = False


def redact(text: str) -> str:
    """``text`` with every known secret and anything shaped like a bot token replaced."""
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def protect_logs(*secrets: str | None) -> None:
    """Redact ``secrets`` (and token-shaped strings) from every log record from now on; quiet the HTTP
    client loggers. Safe to call more than once."""
    global _installed
    _secrets.update(s for s in secrets if s and len(s) >= 8)
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(redacting_factory)
