"""All configuration in one place: environment variables, optionally from a ``.env`` file.

Every setting is documented in the README ("Configuration"). Names are RAPPORT_* except the
platform tokens and REDIS_URL, which use their conventional names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "exported_models" / "rapport-chat-small"
DEFAULT_ENCODER = REPO_ROOT / "exported_models" / "minilm-l6-v2-encoder"
DEFAULT_INDEX = REPO_ROOT / "exported_models" / "ccc-reply-index"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says what to set."""


def load_dotenv(path: Path) -> dict[str, str]:
    """Parse ``KEY=value`` lines of a ``.env`` file (``#`` comments, optional quotes)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


def platform_ids(var: str, raw: str) -> tuple[str, ...]:
    """Comma-separated ``platform:id`` values (``telegram:123, discord:456``), checked."""
    ids = tuple(v.strip() for v in raw.split(",") if v.strip())
    for value in ids:
        platform, _, ident = value.partition(":")
        if not platform or not ident:
            raise ConfigError(f"{var}: {value!r} is not platform:id (e.g. telegram:123456 or discord:987654)")
    return ids


@dataclass(frozen=True)
class Settings:
    """Runtime settings; see :meth:`from_env` for the variable of each field."""

    redis_url: str | None = None
    data_dir: Path = Path.home() / ".local/share/rapport"
    model_dir: Path = DEFAULT_MODEL
    encoder_dir: Path = DEFAULT_ENCODER
    index_dir: Path = DEFAULT_INDEX
    key_prefix: str = "rapport"
    bot_name: str = "Rapport"
    persona: tuple[str, ...] = ("i am a chatbot who likes to talk about anything",
                                "i like music and movies", "i live on a server")
    history_turns: int = 20
    history_tokens: int = 1000
    history_ttl_s: int = 7 * 24 * 3600
    profile_ttl_s: int = 365 * 24 * 3600
    rate_limit_per_minute: int = 20
    lock_timeout_s: float = 30.0
    reply_time_budget_s: float = 5.0
    inference_threads: int = 2
    batch_max: int = 64
    batch_wait_ms: float = 5.0
    max_decode_rows: int = 32
    mode: str = "single"
    gateway_id: str | None = None
    worker_name: str | None = None
    worker_concurrency: int = 64
    claim_idle_s: float = 30.0
    order_timeout_s: float = 120.0
    reply_timeout_s: float = 120.0
    max_message_chars: int = 4000
    profile_weight: float | None = None
    reply_mode: str | None = None
    safety: str = "standard"
    crisis_reply: str | None = None
    crisis_url: str | None = None
    allowed_users: tuple[str, ...] = ()
    allowed_chats: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    telegram_token: str | None = field(default=None, repr=False)
    telegram_api_url: str = "https://api.telegram.org"
    telegram_mode: str = "polling"
    telegram_poll_timeout_s: int = 30
    telegram_webhook_url: str | None = None
    telegram_webhook_listen: str = "0.0.0.0"
    telegram_webhook_port: int = 8443
    telegram_webhook_secret: str | None = field(default=None, repr=False)
    discord_api_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    discord_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, dotenv: Path | None = Path(".env")) -> "Settings":
        """Read settings from ``env`` (default ``os.environ``), falling back to ``dotenv``."""
        merged = load_dotenv(dotenv) if dotenv else {}
        merged.update(os.environ if env is None else env)
        names = {
            "redis_url": "REDIS_URL", "data_dir": "RAPPORT_DATA_DIR", "model_dir": "RAPPORT_MODEL_DIR",
            "encoder_dir": "RAPPORT_ENCODER_DIR", "index_dir": "RAPPORT_INDEX_DIR",
            "key_prefix": "RAPPORT_KEY_PREFIX",
            "bot_name": "RAPPORT_BOT_NAME", "persona": "RAPPORT_PERSONA",
            "history_turns": "RAPPORT_HISTORY_TURNS", "history_tokens": "RAPPORT_HISTORY_TOKENS",
            "history_ttl_s": "RAPPORT_HISTORY_TTL_S", "profile_ttl_s": "RAPPORT_PROFILE_TTL_S",
            "rate_limit_per_minute": "RAPPORT_RATE_LIMIT_PER_MINUTE", "lock_timeout_s": "RAPPORT_LOCK_TIMEOUT_S",
            "reply_time_budget_s": "RAPPORT_REPLY_TIME_BUDGET_S", "inference_threads": "RAPPORT_INFERENCE_THREADS",
            "batch_max": "RAPPORT_BATCH_MAX", "batch_wait_ms": "RAPPORT_BATCH_WAIT_MS",
            "max_decode_rows": "RAPPORT_MAX_DECODE_ROWS", "mode": "RAPPORT_MODE",
            "gateway_id": "RAPPORT_GATEWAY_ID", "worker_name": "RAPPORT_WORKER_NAME",
            "worker_concurrency": "RAPPORT_WORKER_CONCURRENCY", "claim_idle_s": "RAPPORT_CLAIM_IDLE_S",
            "order_timeout_s": "RAPPORT_ORDER_TIMEOUT_S", "reply_timeout_s": "RAPPORT_REPLY_TIMEOUT_S",
            "max_message_chars": "RAPPORT_MAX_MESSAGE_CHARS", "profile_weight": "RAPPORT_PROFILE_WEIGHT",
            "reply_mode": "RAPPORT_REPLY_MODE",
            "safety": "RAPPORT_SAFETY", "crisis_reply": "RAPPORT_CRISIS_REPLY", "crisis_url": "RAPPORT_CRISIS_URL",
            "allowed_users": "RAPPORT_ALLOWED_USERS", "allowed_chats": "RAPPORT_ALLOWED_CHATS",
            "admins": "RAPPORT_ADMINS",
            "telegram_token": "TELEGRAM_BOT_TOKEN", "discord_token": "DISCORD_BOT_TOKEN",
            "telegram_api_url": "RAPPORT_TELEGRAM_API_URL", "telegram_mode": "RAPPORT_TELEGRAM_MODE",
            "telegram_poll_timeout_s": "RAPPORT_TELEGRAM_POLL_TIMEOUT_S",
            "telegram_webhook_url": "RAPPORT_TELEGRAM_WEBHOOK_URL",
            "telegram_webhook_listen": "RAPPORT_TELEGRAM_WEBHOOK_LISTEN",
            "telegram_webhook_port": "RAPPORT_TELEGRAM_WEBHOOK_PORT",
            "telegram_webhook_secret": "RAPPORT_TELEGRAM_WEBHOOK_SECRET",
            "discord_api_url": "RAPPORT_DISCORD_API_URL", "discord_gateway_url": "RAPPORT_DISCORD_GATEWAY_URL",
        }
        kwargs = {}
        types = {f.name: f.type for f in fields(cls)}
        for attr, var in names.items():
            raw = merged.get(var)
            if raw is None or raw == "":
                continue
            kind = types[attr]
            try:
                if attr == "persona":
                    kwargs[attr] = tuple(p.strip() for p in raw.split("|") if p.strip())
                elif attr in ("allowed_users", "allowed_chats", "admins"):
                    kwargs[attr] = platform_ids(var, raw)
                elif "Path" in kind:
                    kwargs[attr] = Path(raw).expanduser()
                elif kind.startswith("int"):
                    kwargs[attr] = int(raw)
                elif kind.startswith("float"):
                    kwargs[attr] = float(raw)
                else:
                    kwargs[attr] = raw
            except ConfigError:
                raise
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r} is not a valid {kind.split()[0]}") from exc
        settings = cls(**kwargs)
        if settings.mode not in ("single", "split"):
            raise ConfigError(f"RAPPORT_MODE must be single or split, got {settings.mode!r}")
        if settings.reply_mode not in (None, "hybrid", "greedy"):
            raise ConfigError(f"RAPPORT_REPLY_MODE must be hybrid or greedy, got {settings.reply_mode!r}")
        if settings.safety not in ("standard", "strict", "off"):
            raise ConfigError(f"RAPPORT_SAFETY must be standard, strict or off, got {settings.safety!r}")
        if settings.telegram_mode not in ("polling", "webhook"):
            raise ConfigError(f"RAPPORT_TELEGRAM_MODE must be polling or webhook, got {settings.telegram_mode!r}")
        return settings
