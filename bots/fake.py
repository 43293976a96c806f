"""The fake adapter: a terminal chat and a programmatic driver for scripted multi-user tests."""
from __future__ import annotations

import asyncio
import secrets
import sys
from collections import defaultdict
from typing import BinaryIO, TextIO

from engine.messages import IncomingMessage, OutgoingMessage, Reaction, Responder

PLATFORM = "fake"


class FakeAdapter:
    """Sends messages to the engine as named users and collects every reply per chat."""

    def __init__(self, engine: Responder) -> None:
        self.engine = engine
        self.outbox: dict[str, list[OutgoingMessage]] = defaultdict(list)
        self.last_reply_id: dict[str, str] = {}  # chat -> id of the bot's latest message there
        self._session = secrets.token_hex(4)  # message ids stay unique across adapter restarts
        self._next_id = 0

    async def send(self, user_id: str, text: str, chat_id: str | None = None, user_name: str = "",
                   is_private: bool = True, message_id: str | None = None) -> OutgoingMessage:
        """Deliver ``text`` from ``user_id`` (in ``chat_id``, default the user's private chat). A repeated
        ``message_id`` is a platform redelivery: the engine answers it with kind "duplicate"."""
        self._next_id += 1
        msg = IncomingMessage(PLATFORM, chat_id or user_id, user_id, text, user_name=user_name,
                              message_id=message_id or f"{self._session}-{self._next_id}", is_private=is_private)
        out = await self.engine.handle(msg)
        if out.silent:
            return out
        self.outbox[out.chat_id].append(out)
        self._next_id += 1
        self.last_reply_id[out.chat_id] = f"{self._session}-{self._next_id}"
        await self.engine.sent(out, [self.last_reply_id[out.chat_id]])
        return out

    async def react(self, user_id: str, value: int, chat_id: str | None = None, message_id: str | None = None) -> None:
        """``user_id`` reacts (+1 liked, -1 disliked, 0 taken back) to the bot's message ``message_id``
        (default: its latest in the chat)."""
        chat = chat_id or user_id
        await self.engine.react(Reaction(PLATFORM, chat, user_id, message_id or self.last_reply_id.get(chat, "none"),
                                         value))


def one_line(text: str) -> str:
    """A reply on a single line (for piped, line-per-line use)."""
    return " | ".join(line for line in text.splitlines() if line.strip())


async def terminal_chat(engine: Responder, user_id: str, user_name: str, stdin: BinaryIO, stdout: TextIO,
                        interactive: bool) -> None:
    """Chat on the terminal; with piped input, print exactly one reply line per input line."""
    adapter = FakeAdapter(engine)
    name = engine.settings.bot_name
    if interactive:
        stdout.write(f"{name}: Hi! I'm {name}. Type /help for commands, Ctrl-D to quit.\n")
    loop = asyncio.get_running_loop()
    while True:
        if interactive:
            stdout.write("you: ")
            stdout.flush()
        raw = await loop.run_in_executor(None, stdin.readline)
        if not raw:
            break
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        out = await adapter.send(user_id, text, user_name=user_name)
        stdout.write(f"{name}: {out.text}\n" if interactive else one_line(out.text) + "\n")
        stdout.flush()


def stdin_is_tty() -> bool:
    """True when a person is typing (not piped input)."""
    return sys.stdin.isatty()
