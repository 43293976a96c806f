"""Build the seq2seq model input from persona facts, user facts and recent turns.

Shared by training and the runtime so that the model always sees the same layout:

    [CLS] [unused3] bot facts [unused4] user facts [unused1] user turn [unused2] bot turn ... [SEP]

Turns are kept from the newest backwards until the token budget is spent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

USER_MARK = "[unused1]"
BOT_MARK = "[unused2]"
PERSONA_MARK = "[unused3]"
FACTS_MARK = "[unused4]"
SPECIAL_MARKS = (USER_MARK, BOT_MARK, PERSONA_MARK, FACTS_MARK)


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation; ``from_user`` is False for the bot's own turns."""

    text: str
    from_user: bool


@dataclass(frozen=True)
class PromptBudget:
    """Token budgets of the model input."""

    max_source_tokens: int = 128
    max_facts_tokens: int = 24
    max_turn_tokens: int = 48

    def build(self, codec, turns: Sequence[Turn], persona_facts: Sequence[str] = (),
              user_facts: Sequence[str] = ()) -> list[int]:
        """The seq2seq layout's encoder input (``codec``: a TextCodec)."""
        return build_source_ids(codec.encode, codec.special_ids, turns, persona_facts, user_facts, self)


def _facts_ids(encode, mark_id: int, facts: Sequence[str], budget: int) -> list[int]:
    ids: list[int] = []
    for fact in facts:
        fact_ids = encode(fact)
        if len(ids) + len(fact_ids) > budget:
            break
        ids.extend(fact_ids)
    return [mark_id] + ids


def build_source_ids(
    encode,
    special_ids: dict[str, int],
    turns: Sequence[Turn],
    persona_facts: Sequence[str] = (),
    user_facts: Sequence[str] = (),
    budget: PromptBudget = PromptBudget(),
) -> list[int]:
    """Return encoder input ids.

    ``encode`` maps text to token ids without special tokens; ``special_ids`` maps
    ``[CLS]``, ``[SEP]`` and the four marks to ids. The newest turn always fits (it is
    cut to ``max_turn_tokens`` keeping its end); older turns are dropped first.
    """
    head = _facts_ids(encode, special_ids[PERSONA_MARK], persona_facts, budget.max_facts_tokens)
    head += _facts_ids(encode, special_ids[FACTS_MARK], user_facts, budget.max_facts_tokens)
    room = budget.max_source_tokens - 2 - len(head)
    body: list[int] = []
    for turn in reversed(turns):
        ids = encode(turn.text)[-budget.max_turn_tokens:]
        piece = [special_ids[USER_MARK if turn.from_user else BOT_MARK]] + ids
        if len(piece) > room - len(body):
            if body:
                break
            piece = piece[:1] + piece[1:][-(room - 1):]
        body = piece + body
    return [special_ids["[CLS]"]] + head + body + [special_ids["[SEP]"]]
