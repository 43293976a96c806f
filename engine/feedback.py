"""Reactions to the bot's replies: what an emoji means, tying a reaction to the reply it rates, and the
user's taste (:mod:`engine.model.taste`) built from their reactions. Used by the engine and, in split
mode, by the gateway (which records, while workers learn)."""
from __future__ import annotations

import asyncio
from typing import Callable, Iterable

import numpy as np

from .access import Access
from .messages import OutgoingMessage, Reaction
from .metrics import REACTIONS
from .model.taste import Taste, TasteSettings
from .state.store import Store, UserRef

LIKES = frozenset("👍 ❤ ♥ 🔥 🥰 👏 😁 🎉 🤩 👌 💯 😍 🙏 😂 🤣 💘 😘 🤗 😊 🏆 ⚡ 🍾 💋 🆒 😎 ✅".split())
DISLIKES = frozenset("👎 💩 🤮 😡 🤬 😢 🥱 😴 🤡 🙄 😒 🤨 😐 💔 😭 ❌ 🤦".split())


def reaction_value(emojis: Iterable[str]) -> int:
    """+1 when the emoji a person has on a message say "liked", -1 for "disliked", else 0 (none left,
    neutral emoji like 👀, or both kinds at once)."""
    names = {e.replace("\ufe0f", "") for e in emojis if e}
    liked, disliked = bool(names & LIKES), bool(names & DISLIKES)
    return 1 if liked and not disliked else -1 if disliked and not liked else 0


class FeedbackRecorder:
    """Remembers which platform message carried which reply, and stores reactions to them."""

    def __init__(self, store: Store, access: Access) -> None:
        self.store = store
        self.access = access

    async def sent(self, out: OutgoingMessage, message_ids: list[str]) -> None:
        """Remember the messages that carried a reply (commands and notices cannot be rated)."""
        if out.kind != "reply" or not message_ids:
            return
        await self.store.remember_sent(UserRef(out.platform, out.user_id, out.chat_id), message_ids, out.text)

    async def react(self, reaction: Reaction) -> bool:
        """Store a reaction of the person the reply was for; False (ignored) for a message the bot no longer
        knows, someone else's reply, or an account the operator keeps out."""
        ref = UserRef(reaction.platform, reaction.user_id, reaction.chat_id)
        used = self.access.listed(ref.user, ref.chat) and not await self.store.is_blocked(ref.user) and \
            await rate_sent(self.store, await self.store.resolve(ref), reaction.message_id, reaction.value)
        REACTIONS.labels(reaction.platform, "used" if used else "ignored").inc()
        return used


async def rate_sent(store: Store, ref: UserRef, message_id: str, value: int) -> bool:
    """Store ``ref``'s rating (+1, -1; 0 takes it back) of the reply the bot's message ``message_id`` carried;
    False when that is no reply to ``ref`` the bot still knows."""
    text = await store.sent_text(ref, message_id)
    if text is None:
        return False
    await store.set_reaction(ref, message_id, text, value)
    return True


async def load_taste(store: Store, ref: UserRef, embed: Callable[[list[str]], np.ndarray],
                     settings: TasteSettings = TasteSettings()) -> Taste | None:
    """The taste of ``ref``'s reactions (None without any). Replies rated since the last call are embedded
    now (in a thread) and their vectors stored."""
    records = await store.reactions(ref)
    if not records:
        return None
    vectors = await store.reaction_vectors(ref)
    missing = [k for k in records if k not in vectors]
    if missing:
        new = await asyncio.to_thread(embed, [records[k]["text"] for k in missing])
        fresh = dict(zip(missing, new))
        await store.set_reaction_vectors(ref, fresh)
        vectors.update(fresh)
    keys = sorted(records)
    return Taste.from_reactions(np.stack([vectors[k] for k in keys]), [records[k]["text"] for k in keys],
                               [int(records[k]["value"]) for k in keys], settings)
