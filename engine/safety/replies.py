"""The fixed replies of safety actions (never generated). The crisis text and its helpline URL can be
set by the operator (RAPPORT_CRISIS_REPLY, RAPPORT_CRISIS_URL)."""
from __future__ import annotations

from dataclasses import dataclass

from .filter import Category

DEFAULT_CRISIS_URL = "https://findahelpline.com"
DEFAULT_CRISIS_REPLY = (
    "I'm really sorry you're going through this, and I'm glad you told me. I'm only a chatbot and can't give "
    "you the support you deserve, but people can, right now: please reach out to someone you trust, or to a "
    "free, confidential crisis line. You can find one for your country at {url}. If you are in immediate "
    "danger, please call your local emergency number.")
CHECK_IN_REPLY = (
    "I want to make sure I understood you. Are you thinking about hurting yourself or ending your life? If you "
    "are, please talk to someone you trust or to a free, confidential crisis line; you can find one for your "
    "country at {url}. If I misread you, tell me a bit more and we'll keep talking.")
ABUSE_REPLIES = {
    Category.HATE: "I don't agree with that. People shouldn't be put down for who they are. Let's talk about "
                   "something else.",
    Category.VIOLENCE: "I can't help with anything that could hurt someone. If anyone is in danger, please contact "
                       "your local emergency number. I'm happy to talk about something else.",
    Category.SEXUAL: "I keep our chats friendly and not sexual. Let's talk about something else.",
    Category.HARASSMENT: "I'd like to keep this friendly, so I won't go on like that. If something is bothering "
                         "you, tell me about it.",
    Category.JAILBREAK: "I keep the same rules in every game and role-play, but I'm happy to play along with "
                        "something else.",
}


@dataclass(frozen=True)
class SafetyReplies:
    """What the bot says instead of a generated reply."""

    crisis_text: str = DEFAULT_CRISIS_REPLY
    crisis_url: str = DEFAULT_CRISIS_URL

    def for_category(self, category: Category) -> str:
        """The fixed reply for a message of ``category``."""
        if category is Category.CRISIS:
            return self.crisis_text.replace("{url}", self.crisis_url)
        if category is Category.CHECK_IN:
            return CHECK_IN_REPLY.replace("{url}", self.crisis_url)
        return ABUSE_REPLIES[category]
