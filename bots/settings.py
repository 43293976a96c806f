"""Each platform's settings, read like the engine's (``engine.config.env``); the adapters take them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import env, env_values, from_env, one_of


@dataclass(frozen=True)
class TelegramSettings:
    """The Telegram bot: token, Bot API address, polling or webhook."""

    token: str | None = env("TELEGRAM_BOT_TOKEN", None, secret=True)
    api_url: str = env("RAPPORT_TELEGRAM_API_URL", "https://api.telegram.org")
    mode: str = env("RAPPORT_TELEGRAM_MODE", "polling")
    poll_timeout_s: int = env("RAPPORT_TELEGRAM_POLL_TIMEOUT_S", 30)
    webhook_url: str | None = env("RAPPORT_TELEGRAM_WEBHOOK_URL", None)
    webhook_listen: str = env("RAPPORT_TELEGRAM_WEBHOOK_LISTEN", "0.0.0.0")
    webhook_port: int = env("RAPPORT_TELEGRAM_WEBHOOK_PORT", 8443)
    webhook_secret: str | None = env("RAPPORT_TELEGRAM_WEBHOOK_SECRET", None, secret=True)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, dotenv: Path | None = Path(".env")) -> "TelegramSettings":
        """Read the variables (``environ`` over ``dotenv``)."""
        settings = from_env(cls, env_values(dotenv, environ))
        one_of("RAPPORT_TELEGRAM_MODE", settings.mode, ("polling", "webhook"))
        return settings


@dataclass(frozen=True)
class DiscordSettings:
    """The Discord bot: token and the API and gateway addresses."""

    token: str | None = env("DISCORD_BOT_TOKEN", None, secret=True)
    api_url: str = env("RAPPORT_DISCORD_API_URL", "https://discord.com/api/v10")
    gateway_url: str = env("RAPPORT_DISCORD_GATEWAY_URL", "wss://gateway.discord.gg/")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, dotenv: Path | None = Path(".env")) -> "DiscordSettings":
        """Read the variables (``environ`` over ``dotenv``)."""
        return from_env(cls, env_values(dotenv, environ))
