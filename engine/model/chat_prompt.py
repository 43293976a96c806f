"""The prompt layout of the decoder-only chat family (ChatML turns, the format SmolLM2-Instruct knows).

Shared by training and the runtime so that the model always sees the same tokens::

    <|im_start|>system\\n{who the bot is, what it knows about the user}<|im_end|>\\n
    <|im_start|>user\\n{turn}<|im_end|>\\n
    <|im_start|>assistant\\n{turn}<|im_end|>\\n
    ...
    <|im_start|>assistant\\n                      <- the model writes the reply, ending with <|im_end|>

Every piece is encoded on its own, so a turn has the same ids wherever it sits in the history (the
runtime can keep a user's encoded turns, and training windows cut anywhere between turns).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .prompt import Turn

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class ChatBudget:
    """Token budgets of a decoder-only prompt."""

    max_source_tokens: int = 256
    max_facts_tokens: int = 64  # each: the bot's persona lines, the user's facts
    max_turn_tokens: int = 64

    def build(self, codec, turns: Sequence[Turn], persona_facts: Sequence[str] = (),
              user_facts: Sequence[str] = ()) -> list[int]:
        """The chat layout's prompt (``codec``: a ChatCodec)."""
        return build_prompt_ids(codec.encode, turns, persona_facts, user_facts, self)


def _fitting(encode: Encode, facts: Sequence[str], budget: int) -> list[str]:
    kept, used = [], 0
    for fact in facts:
        used += len(encode(fact)) + 1
        if used > budget:
            break
        kept.append(fact)
    return kept


def system_text(encode: Encode, persona_facts: Sequence[str], user_facts: Sequence[str],
                budget: ChatBudget = ChatBudget()) -> str:
    """The system turn: the bot's persona lines and the user's facts, as many as fit their budgets."""
    parts = ["You are chatting with someone. Reply in one or two short sentences, like a friendly person."]
    persona = _fitting(encode, persona_facts, budget.max_facts_tokens)
    if persona:
        parts.append("About you: " + "; ".join(persona) + ".")
    facts = _fitting(encode, user_facts, budget.max_facts_tokens)
    if facts:
        parts.append("About them: " + "; ".join(facts) + ".")
    return " ".join(parts)


def header_ids(encode: Encode, role: str) -> list[int]:
    """``<|im_start|>{role}\\n``."""
    return encode(f"{IM_START}{role}\n")


def turn_pieces(encode: Encode, turn: Turn, max_tokens: int) -> tuple[list[int], list[int], list[int]]:
    """(header, content + ``<|im_end|>``, the newline after it) of one turn; content keeps its start."""
    role = "user" if turn.from_user else "assistant"
    end = encode(IM_END)
    return header_ids(encode, role), encode(turn.text)[:max_tokens] + end, encode("\n")


def system_ids(encode: Encode, text: str) -> list[int]:
    """The whole system turn."""
    return header_ids(encode, "system") + encode(text) + encode(IM_END) + encode("\n")


def build_prompt_ids(encode: Encode, turns: Sequence[Turn], persona_facts: Sequence[str] = (),
                     user_facts: Sequence[str] = (), budget: ChatBudget = ChatBudget()) -> list[int]:
    """Prompt ids ending with the assistant header: the system turn, then the newest turns that fit
    (older ones dropped first; the newest always fits, cut to ``max_turn_tokens``)."""
    head = system_ids(encode, system_text(encode, persona_facts, user_facts, budget))
    tail = header_ids(encode, "assistant")
    room = budget.max_source_tokens - len(head) - len(tail)
    body: list[int] = []
    for turn in reversed(turns):
        header, content, newline = turn_pieces(encode, turn, budget.max_turn_tokens)
        piece = header + content + newline
        if body and len(piece) > room - len(body):
            break
        body = piece + body
    return head + body + tail
