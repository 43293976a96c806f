"""The ``rapport`` command line: ``rapport chat`` (terminal), ``rapport telegram``, ``rapport discord``,
``rapport bots`` (every platform with a token, in one process), ``rapport worker`` (split mode),
``rapport doctor`` and ``rapport migrate-keys`` (the hash-tagged key schema).

With ``RAPPORT_MODE=split`` the adapters hand messages to ``rapport worker`` processes over Redis
Streams instead of running the model themselves."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from engine.config import ConfigError, Settings
from engine.engine import Engine
from engine.log_privacy import protect_logs
from engine.logs import setup_logging
from engine.messages import OutgoingMessage, Responder
from engine.model.retrieval import IndexMismatch
from engine.monitoring import MonitoringServer
from engine.process_memory import tune_malloc
from engine.split.common import split_redis_url
from engine.split.gateway import LateReply, StreamGateway
from engine.split.worker import StreamWorker

from .fake import stdin_is_tty, terminal_chat
from .settings import DiscordSettings, TelegramSettings


def check_model_dir(settings: Settings) -> None:
    """A clear error when the model folder is missing or incomplete."""
    if not (settings.model_dir / "tokenizer.json").exists() or not (settings.model_dir / "encoder_model.onnx").exists():
        raise ConfigError(f"no model at {settings.model_dir}: set RAPPORT_MODEL_DIR (or --model) to an export "
                          "folder (`rapport doctor` shows what Rapport would use)")
    if settings.safety_classifier and not (settings.safety_model_dir / "safety_config.json").exists():
        raise ConfigError(f"no safety classifier at {settings.safety_model_dir}: set RAPPORT_SAFETY_MODEL_DIR to its "
                          "export, or RAPPORT_SAFETY_CLASSIFIER=0 for the patterns alone")


def _chat(args: argparse.Namespace, settings: Settings) -> int:
    if args.model:
        settings = replace(settings, model_dir=args.model)
    if args.encoder:
        settings = replace(settings, encoder_dir=args.encoder)
    try:
        check_model_dir(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        async with responder(settings) as engine:
            await terminal_chat(engine, args.user, args.name, sys.stdin.buffer, sys.stdout, stdin_is_tty())

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except (ConfigError, OSError, IndexMismatch) as exc:  # OSError: Redis unreachable, a port taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


PLATFORMS = ("telegram", "discord")


def responder(settings: Settings, late_reply: LateReply | None = None) -> Engine | StreamGateway:
    """What the adapters talk to: the engine in this process, or in split mode the stream gateway (which
    hands replies that come after the user was told "my reply will follow" to ``late_reply``)."""
    if settings.mode == "split":
        return StreamGateway.from_settings(settings, late_reply)
    return Engine.from_settings(settings)


@asynccontextmanager
async def monitoring(settings: Settings, checks: dict) -> AsyncIterator[None]:
    """/metrics, /healthz and /readyz (``checks``) on RAPPORT_METRICS_PORT while the block runs (unset: off)."""
    if settings.metrics_port is None:
        yield
        return
    async with MonitoringServer(settings.metrics_port, checks, settings.metrics_host):
        yield


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _run_platforms(settings: Settings, platforms: dict[str, TelegramSettings | DiscordSettings]) -> None:
    """Run the adapters of ``platforms`` (name -> its settings) on one engine (or stream gateway) until
    SIGINT or SIGTERM."""
    stop = _stop_on_signals()
    adapters: dict = {}

    async def late_reply(out: OutgoingMessage) -> None:
        await adapters[out.platform].deliver(out)

    engine: Responder
    async with responder(settings, late_reply) as engine:
        runners = []
        for name, platform_settings in platforms.items():
            if name == "telegram":
                from .telegram import TelegramAdapter, run_telegram
                adapters[name] = TelegramAdapter(engine, platform_settings)
                runners.append(run_telegram(adapters[name], stop))
            else:
                from .discord_bot import RapportDiscordClient, run_discord
                adapters[name] = RapportDiscordClient(engine, platform_settings)
                runners.append(run_discord(adapters[name], stop))
        checks = {"engine": engine.ready, **{name: adapter.connected for name, adapter in adapters.items()}}
        async with monitoring(settings, checks):
            tasks = [asyncio.create_task(r) for r in runners]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _bots(args: argparse.Namespace, settings: Settings) -> int:
    try:
        found = {"telegram": TelegramSettings.from_env(dotenv=args.env_file),
                 "discord": DiscordSettings.from_env(dotenv=args.env_file)}
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        check_model_dir(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    platforms = {args.command: found[args.command]} if args.command in PLATFORMS else \
        {name: s for name, s in found.items() if s.token}
    if not platforms:
        print("error: set TELEGRAM_BOT_TOKEN and/or DISCORD_BOT_TOKEN (environment or .env)", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        asyncio.run(_run_platforms(settings, platforms))
    except (ConfigError, OSError, IndexMismatch) as exc:  # OSError: Redis unreachable, a port taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)

    async def run() -> None:
        split_redis_url(settings)
        check_model_dir(settings)
        stop = _stop_on_signals()
        async with Engine.from_settings(settings) as engine, monitoring(settings, {"engine": engine.ready}):
            worker = StreamWorker(engine)
            logging.getLogger("rapport.worker").info("worker %s serving %s", worker.name, settings.redis_url)
            await worker.run(stop)

    try:
        asyncio.run(run())
    except (ConfigError, OSError, IndexMismatch) as exc:  # OSError: Redis unreachable, a port taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate_keys(args: argparse.Namespace, settings: Settings) -> int:
    from engine.state.migrate import migrate_keys
    from engine.state.redis_server import EmbeddedRedis
    from engine.state.store import connect

    async def run() -> int:
        embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir / "redis").start()
        client = connect(settings.redis_url or embedded.url, cluster=settings.redis_cluster)
        try:
            report = await migrate_keys(client, settings.key_prefix, dry_run=args.dry_run,
                                        stream_shards=settings.stream_shards)
        finally:
            await client.aclose()
            if embedded:
                embedded.stop()
        verb = "would move" if args.dry_run else "moved"
        print(f"{verb} {report.moved} keys to the hash-tagged schema; {report.already_new} were already there, "
              f"{report.shared} are shared keys (unchanged)")
        for key_list, what in ((report.conflicts, "new name already in use, old key kept"),
                               (report.unknown, "not understood, left alone")):
            if key_list:
                print(f"{len(key_list)} keys: {what}")
        return 1 if report.conflicts or report.unknown else 0

    try:
        return asyncio.run(run())
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    from .doctor import run
    return run(settings, args.env_file)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rapport``."""
    parser = argparse.ArgumentParser(prog="rapport", description="Rapport, a personalized chatbot.")
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="optional .env file (default ./.env)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="chat with the bot in the terminal (piped input: one reply per line)",
                          description="Chat in the terminal. With piped stdin, prints one reply line per input line.")
    chat.add_argument("--user", default="local", help="your user id (state is kept per id; default: local)")
    chat.add_argument("--name", default="", help="your display name")
    chat.add_argument("--model", type=Path, help="seq2seq export folder (default: RAPPORT_MODEL_DIR, else the model installed with the package in exported_models/)")
    chat.add_argument("--encoder", type=Path, help="sentence encoder folder (default: RAPPORT_ENCODER_DIR)")
    chat.set_defaults(run=_chat)
    for name, text in (("telegram", "run the Telegram bot (TELEGRAM_BOT_TOKEN; polling or webhook)"),
                       ("discord", "run the Discord bot (DISCORD_BOT_TOKEN; needs the message-content intent)"),
                       ("bots", "run every platform whose token is set, in one process")):
        sub.add_parser(name, help=text, description=text + ". Stops cleanly on SIGINT/SIGTERM.").set_defaults(run=_bots)
    text = "move Redis keys written before the hash-tagged key schema (needed for a Redis Cluster) to their new names"
    migrate = sub.add_parser("migrate-keys", help=text, description=text + ". Idempotent; stop the bot while it runs.")
    migrate.add_argument("--dry-run", action="store_true", help="count what would move, change nothing")
    migrate.set_defaults(run=_migrate_keys)
    text = "check this installation: versions, CPU features, the model, encoder, index and Redis it would use"
    sub.add_parser("doctor", help=text, description=text + "; exit code 1 when a part does not work. Models are "
                   "found at RAPPORT_MODEL_DIR / RAPPORT_ENCODER_DIR / RAPPORT_INDEX_DIR, else in the installed "
                   "package's exported_models folder.").set_defaults(run=_doctor)
    text = "run an engine worker for split mode (REDIS_URL; adapters run with RAPPORT_MODE=split)"
    sub.add_parser("worker", help=text, description=text + ". Start as many as you like, on any machine "
                   "sharing the Redis server. Stops cleanly on SIGINT/SIGTERM.").set_defaults(run=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rapport`` command."""
    tune_malloc()
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(dotenv=args.env_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(logging.DEBUG if args.verbose else logging.WARNING, settings.log_format)
    protect_logs()  # token-shaped strings out of every log record, from the start
    return args.run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
