"""Ten scripted conversations through the whole engine, printed unedited: do later replies use the facts?

    python -m bench.sample_chats [--model DIR] [--out bench/results/sample_chats.md]

Each scripted user states two or three things about themselves early on, then talks about something
else and finally asks or says something where a fact could come back. The scripts were written before
the replies were seen and are all shown (no selection). A bot reply is marked [uses a fact] when it
contains a content word of the user's stored facts that is not in the last two turns.
"""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from engine.config import Settings
from engine.facts import content_words

from .throwaway import throwaway_settings

SCRIPTS = [
    ["hi! i work as a nurse at the children's hospital.", "i also have a dog named biscuit.",
     "it was a long week.", "what should i do this weekend?", "any ideas for a present for a coworker?"],
    ["hello there", "i love to bake bread on sundays.", "i live in a small town near the coast.",
     "the weather has been awful lately.", "what do you think i should cook tonight?"],
    ["hey, i'm a student and i study chemistry.", "i play the violin in an orchestra.",
     "exams start next month.", "how can i relax before a concert?", "tell me something fun"],
    ["good morning!", "i go running every morning before work.", "my favorite food is sushi.",
     "i'm trying to eat healthier.", "what's a good breakfast for me?"],
    ["hi", "i have two cats and a parrot.", "i work from home as a translator.",
     "my neighbours are very loud.", "do you have any tips for focusing?"],
    ["hey! my name is sam and i'm a firefighter.", "i like fishing with my dad.",
     "we are going to the lake soon.", "what should i bring?", "what do you remember about me?"],
    ["hello", "i am a teacher and i love reading mystery novels.", "i have three kids.",
     "the holidays are coming up.", "can you recommend something to do with the family?"],
    ["hi there", "i'm a vegetarian and i love gardening.", "i grow tomatoes in my backyard.",
     "it has been really hot this summer.", "what should i plant next?"],
    ["yo", "i play basketball every weekend.", "i work as a mechanic.", "my car broke down yesterday.",
     "funny, right? what would you do?"],
    ["hi, i just moved to canada from brazil.", "i miss the beach a lot.", "i'm learning to ski this winter.",
     "it is so cold here!", "how do people survive winter?"],
]


def uses_fact(reply: str, facts: list[str], last_turns: str) -> bool:
    """A content word of ``facts`` in ``reply`` that is not in ``last_turns``."""
    return bool((content_words(reply) & content_words(" ".join(facts))) - content_words(last_turns))


async def run(settings: Settings) -> tuple[str, int, int]:
    """The transcripts (markdown), replies that use a fact, replies in all."""
    from bots.fake import FakeAdapter
    from engine.engine import Engine
    from engine.state.store import UserRef
    lines, used, total = [], 0, 0
    async with Engine.from_settings(settings) as engine:
        bot = FakeAdapter(engine)
        for n, script in enumerate(SCRIPTS, 1):
            lines.append(f"**Conversation {n}**\n")
            previous = ""
            for text in script:
                reply = (await bot.send(f"sample{n}", text)).text
                facts = await engine.store.facts(UserRef("fake", f"sample{n}", f"sample{n}"))
                mark = uses_fact(reply, facts, f"{previous} {text}")
                used, total = used + mark, total + 1
                lines.append(f"- user: {text}\n- bot: {reply}{'  *[uses a fact]*' if mark else ''}")
                previous = reply
            lines.append(f"\nfacts stored: {'; '.join(facts) or '(none)'}\n")
    return "\n".join(lines), used, total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sample_chats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="chat model folder (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("bench/results/sample_chats.md"))
    args = p.parse_args(argv)
    with throwaway_settings(args.model) as settings:
        text, used, total = asyncio.run(run(settings))
    summary = f"{used} of {total} bot replies use a stored fact of the user (not in the last two turns)."
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n\n" + summary + "\n")
    print(text + "\n\n" + summary)


if __name__ == "__main__":
    main()
