"""Fake platform servers (Telegram Bot API, Discord REST + gateway) on 127.0.0.1 for end-to-end tests."""
from __future__ import annotations

import asyncio
import time


async def wait_for_items(items: list, count: int, timeout: float) -> list:
    """Wait until ``items`` (filled by a fake server) holds at least ``count`` entries; return it."""
    deadline = time.monotonic() + timeout
    while len(items) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the bot sent {len(items)} of {count} messages: {items}")
        await asyncio.sleep(0.05)
    return items
