"""The two message types every adapter speaks: one in, one out."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .config import Settings


DUPLICATE = "duplicate"  # OutgoingMessage.kind of a repeated delivery: adapters send nothing
NOT_TEXT = "I can only read text for now. Could you tell me in words?"  # a photo, sticker, voice note...
IGNORED = "ignored"  # OutgoingMessage.kind for a blocked or not-allowed user (no notice due): send nothing


@dataclass(frozen=True)
class IncomingMessage:
    """A message from a person on a platform. ``user_id`` is required: it keys all state."""

    platform: str
    chat_id: str
    user_id: str
    text: str
    user_name: str = ""
    message_id: str = ""
    timestamp: float = field(default_factory=time.time)
    is_private: bool = True
    replied_to: str = ""  # the platform's id of the bot message this one replies to (for /good and /bad)

    def __post_init__(self) -> None:
        for name in ("platform", "chat_id", "user_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"IncomingMessage.{name} must be a non-empty string, got {value!r}")
        if ":" in self.platform:
            raise ValueError(f"IncomingMessage.platform must not contain ':', got {self.platform!r}")


@dataclass(frozen=True)
class OutgoingMessage:
    """The engine's answer to one :class:`IncomingMessage`."""

    platform: str
    chat_id: str
    user_id: str
    text: str
    reply_to: str = ""
    kind: str = "reply"  # reply | command | safety | notice (rate limit, error, busy, access) | duplicate | ignored

    @property
    def silent(self) -> bool:
        """True when the adapter sends nothing (a redelivery, or a user the operator keeps out)."""
        return not self.text


@dataclass(frozen=True)
class Reaction:
    """A person's reaction to one of the bot's messages: ``value`` +1 (liked), -1 (disliked), or 0 (taken
    back, or an emoji that says neither)."""

    platform: str
    chat_id: str
    user_id: str
    message_id: str  # the platform's id of the bot's message
    value: int


class Responder(Protocol):
    """What adapters talk to: the in-process :class:`~engine.engine.Engine`, or in split mode the
    :class:`~engine.split.gateway.StreamGateway` that hands messages to workers over Redis Streams."""

    settings: "Settings"

    async def handle(self, msg: IncomingMessage) -> OutgoingMessage: ...

    async def sent(self, out: OutgoingMessage, message_ids: list[str]) -> None:
        """Tell the engine the platform ids of the messages that carried ``out`` (reactions name them)."""

    async def react(self, reaction: Reaction) -> None:
        """A reaction to one of the bot's messages (ignored when the bot no longer knows the message)."""

