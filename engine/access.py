"""Who may talk to the bot: allowlists and admins from the configuration, blocks from Redis."""
from __future__ import annotations

from .config import Settings

NOT_ALLOWED = "Sorry, this bot is private. Ask its operator for access."
BLOCKED = "Sorry, you can't use this bot any more. /export and /forget still work for your data."
PRIVACY_COMMANDS = ("/export", "/forget")  # data rights: answered for every account, even a blocked one


class Access:
    """RAPPORT_ALLOWED_USERS / RAPPORT_ALLOWED_CHATS (``platform:id`` lists, empty = everyone) and
    RAPPORT_ADMINS (always allowed; may run /block, /unblock, /stats)."""

    def __init__(self, settings: Settings) -> None:
        self.users = frozenset(settings.allowed_users)
        self.chats = frozenset(settings.allowed_chats)
        self.admins = frozenset(settings.admins)

    def is_admin(self, user: str) -> bool:
        return user in self.admins

    def listed(self, user: str, chat: str) -> bool:
        """True when the allowlists let ``user`` talk in ``chat`` (``platform:id`` each)."""
        if user in self.admins or not (self.users or self.chats):
            return True
        return user in self.users or chat in self.chats
