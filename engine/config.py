"""All configuration in one place: environment variables, optionally from a ``.env`` file.

Each setting is a dataclass field that names its variable (:func:`env`); :func:`from_env` reads any such
dataclass: the engine's :class:`Settings` here, each platform's next to its adapter (``bots/``). Every
setting is documented in the README ("Configuration"). Names are RAPPORT_* except the platform tokens
and REDIS_URL, which use their conventional names. ``.env`` files are read by python-dotenv.
"""
from __future__ import annotations

import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

from dotenv import dotenv_values

from .logs import FORMATS
from .model.decoding import REPLY_MODES

MODELS = Path(__file__).resolve().parent.parent / "exported_models"  # the clone's, or site-packages' (package data)
DEFAULT_MODEL = MODELS / "rapport-chat-persona"
DEFAULT_ENCODER = MODELS / "minilm-l6-v2-encoder"
DEFAULT_INDEX = MODELS / "ccc-reply-index"
DEFAULT_SAFETY_MODEL = MODELS / "safety-classifier"
DEFAULT_PROFANITY = MODELS / "profanity-check"  # alt-profanity-check's arrays (rapport-train export-profanity)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says what to set."""


def platform_ids(var: str, raw: str) -> tuple[str, ...]:
    """Comma-separated ``platform:id`` values (``telegram:123, discord:456``), checked."""
    ids = tuple(v.strip() for v in raw.split(",") if v.strip())
    for value in ids:
        platform, _, ident = value.partition(":")
        if not platform or not ident:
            raise ConfigError(f"{var}: {value!r} is not platform:id (e.g. telegram:123456 or discord:987654)")
    return ids


def env(var: str, default: Any, parse: Callable[[str, str], Any] | None = None, secret: bool = False) -> Any:
    """A settings field read from the variable ``var``; ``parse(var, raw)`` replaces the conversion by type."""
    return field(default=default, repr=not secret, metadata={"env": var, "parse": parse})


def env_values(dotenv: Path | None = Path(".env"), environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables: ``environ`` (default ``os.environ``) over the ``dotenv`` file's."""
    merged = {k: v for k, v in dotenv_values(dotenv).items() if v is not None} if dotenv and dotenv.is_file() else {}
    merged.update(os.environ if environ is None else environ)
    return merged


def _convert(kind: Any, var: str, raw: str) -> Any:
    """``raw`` as ``kind`` (str, int, float, bool, Path, or an optional one of them)."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{var}={raw!r} is not a valid bool (1/0, true/false, yes/no, on/off)")
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        return kind(raw) if kind in (str, int, float) else Path(raw).expanduser() if kind is Path else raw
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from exc


T = TypeVar("T")


def from_env(cls: type[T], values: dict[str, str]) -> T:
    """An instance of the settings dataclass ``cls`` from ``values`` (unset or empty: the default)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        var = f.metadata.get("env")
        raw = values.get(var) if var else None
        if raw:
            parse = f.metadata.get("parse")
            kwargs[f.name] = parse(var, raw) if parse else _convert(hints[f.name], var, raw)
    return cls(**kwargs)


def one_of(var: str, value: Any, choices: tuple) -> None:
    """Raise a :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        named = [str(c) for c in choices if c is not None]
        raise ConfigError(f"{var} must be {', '.join(named[:-1])} or {named[-1]}, got {value!r}")


def persona_lines(var: str, raw: str) -> tuple[str, ...]:
    """``|``-separated persona lines."""
    return tuple(p.strip() for p in raw.split("|") if p.strip())


@dataclass(frozen=True)
class Settings:
    """The engine's settings, each read from the variable it names."""

    redis_url: str | None = env("REDIS_URL", None)
    data_dir: Path = env("RAPPORT_DATA_DIR", Path.home() / ".local/share/rapport")
    model_dir: Path = env("RAPPORT_MODEL_DIR", DEFAULT_MODEL)
    encoder_dir: Path = env("RAPPORT_ENCODER_DIR", DEFAULT_ENCODER)
    index_dir: Path = env("RAPPORT_INDEX_DIR", DEFAULT_INDEX)
    redis_cluster: bool = env("RAPPORT_REDIS_CLUSTER", False)
    key_prefix: str = env("RAPPORT_KEY_PREFIX", "rapport")
    bot_name: str = env("RAPPORT_BOT_NAME", "Rapport")
    persona: tuple[str, ...] = env("RAPPORT_PERSONA", ("i am a chatbot who likes to talk about anything",
                                                      "i like music and movies", "i live on a server"), persona_lines)
    history_turns: int = env("RAPPORT_HISTORY_TURNS", 20)
    history_tokens: int = env("RAPPORT_HISTORY_TOKENS", 1000)
    history_ttl_s: int = env("RAPPORT_HISTORY_TTL_S", 7 * 24 * 3600)
    profile_ttl_s: int = env("RAPPORT_PROFILE_TTL_S", 365 * 24 * 3600)
    rate_limit_per_minute: int = env("RAPPORT_RATE_LIMIT_PER_MINUTE", 20)
    lock_timeout_s: float = env("RAPPORT_LOCK_TIMEOUT_S", 30.0)
    reply_time_budget_s: float = env("RAPPORT_REPLY_TIME_BUDGET_S", 5.0)
    inference_threads: int = env("RAPPORT_INFERENCE_THREADS", 2)
    batch_max: int = env("RAPPORT_BATCH_MAX", 64)
    batch_wait_ms: float = env("RAPPORT_BATCH_WAIT_MS", 5.0)
    batch_gather_ms: float = env("RAPPORT_BATCH_GATHER_MS", 100.0)
    max_decode_rows: int = env("RAPPORT_MAX_DECODE_ROWS", 32)
    mode: str = env("RAPPORT_MODE", "single")
    gateway_id: str | None = env("RAPPORT_GATEWAY_ID", None)
    worker_name: str | None = env("RAPPORT_WORKER_NAME", None)
    worker_concurrency: int = env("RAPPORT_WORKER_CONCURRENCY", 64)
    stream_shards: int = env("RAPPORT_STREAM_SHARDS", 1)
    worker_shards: str | None = env("RAPPORT_WORKER_SHARDS", None)
    claim_idle_s: float = env("RAPPORT_CLAIM_IDLE_S", 30.0)
    order_timeout_s: float = env("RAPPORT_ORDER_TIMEOUT_S", 120.0)
    reply_timeout_s: float = env("RAPPORT_REPLY_TIMEOUT_S", 120.0)
    max_message_chars: int = env("RAPPORT_MAX_MESSAGE_CHARS", 4000)
    profile_weight: float | None = env("RAPPORT_PROFILE_WEIGHT", None)
    reply_mode: str | None = env("RAPPORT_REPLY_MODE", None)
    learn_from_reactions: bool = env("RAPPORT_LEARN_FROM_REACTIONS", True)
    safety: str = env("RAPPORT_SAFETY", "standard")
    safety_classifier: bool = env("RAPPORT_SAFETY_CLASSIFIER", True)
    safety_model_dir: Path = env("RAPPORT_SAFETY_MODEL_DIR", DEFAULT_SAFETY_MODEL)
    crisis_reply: str | None = env("RAPPORT_CRISIS_REPLY", None)
    crisis_url: str | None = env("RAPPORT_CRISIS_URL", None)
    allowed_users: tuple[str, ...] = env("RAPPORT_ALLOWED_USERS", (), platform_ids)
    allowed_chats: tuple[str, ...] = env("RAPPORT_ALLOWED_CHATS", (), platform_ids)
    admins: tuple[str, ...] = env("RAPPORT_ADMINS", (), platform_ids)
    metrics_port: int | None = env("RAPPORT_METRICS_PORT", None)
    metrics_host: str = env("RAPPORT_METRICS_HOST", "0.0.0.0")
    log_format: str = env("RAPPORT_LOG_FORMAT", "text")
    log_text: bool = env("RAPPORT_LOG_TEXT", False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, dotenv: Path | None = Path(".env")) -> "Settings":
        """Read settings from ``environ`` (default ``os.environ``), falling back to ``dotenv``."""
        settings = from_env(cls, env_values(dotenv, environ))
        one_of("RAPPORT_MODE", settings.mode, ("single", "split"))
        one_of("RAPPORT_REPLY_MODE", settings.reply_mode, (None, *REPLY_MODES))
        one_of("RAPPORT_SAFETY", settings.safety, ("standard", "strict", "off"))
        one_of("RAPPORT_LOG_FORMAT", settings.log_format, FORMATS)
        return settings
