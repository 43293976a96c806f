"""Does the bot keep its own persona? (issue 13)

    python -m bench.persona [--limit 100] [--out bench/results/persona.json]

Confusion probes: a fresh user states a fact about themselves ("I work as a nurse."), then asks the bot
about itself on the same topic ("what do you do for work?"). The bot *claims the user's fact* when its
reply speaks in the first person and contains the fact's key word ("nurse"). Self probes: the bot is
asked about its persona (RAPPORT_PERSONA); its answer is *consistent* when it contains one of the
expected words. Both through the whole engine (model, ranker, Redis) with the fake adapter.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path

from engine.config import Settings

from .throwaway import throwaway_settings

# (what the user says about themselves, the key word, a question to the bot on the same topic)
JOBS = ["nurse", "teacher", "plumber", "lawyer", "chef", "firefighter", "pilot", "dentist", "farmer", "librarian",
        "mechanic", "architect", "journalist", "pharmacist", "electrician", "baker", "photographer", "accountant",
        "carpenter", "veterinarian", "programmer", "waiter", "translator", "surgeon", "painter"]
PETS = ["dog", "cat", "parrot", "hamster", "rabbit", "turtle", "horse", "goldfish", "snake", "ferret",
        "lizard", "pony", "puppy", "kitten", "chicken", "goat", "pig", "iguana", "canary", "tarantula"]
HOBBIES = ["surfing", "knitting", "chess", "gardening", "skiing", "fishing", "painting", "yoga", "baking", "hiking",
           "climbing", "swimming", "cycling", "dancing", "running", "pottery", "karate", "boxing", "tennis", "golf",
           "camping", "sailing", "skating", "archery", "origami"]
PLACES = ["lisbon", "tokyo", "nairobi", "toronto", "sydney", "berlin", "chicago", "mumbai", "dublin", "seoul",
          "madrid", "cairo", "oslo", "lima", "denver"]
FAMILY = [("sister", "sisters"), ("brother", "brothers"), ("son", "sons"), ("daughter", "daughters"),
          ("twins", "twins"), ("husband", "husband"), ("wife", "wife"), ("grandson", "grandsons"),
          ("stepmother", "stepmother"), ("cousin", "cousins"), ("uncle", "uncle"), ("aunt", "aunts"),
          ("niece", "nieces"), ("nephew", "nephews"), ("granddaughter", "granddaughters")]


def confusion_probes() -> list[tuple[str, str, str]]:
    """100 (user statement, key word, question to the bot)."""
    probes = [(f"I work as a {j}.", j, "what do you do for work?") for j in JOBS]
    probes += [(f"I have a {p} at home.", p, "do you have any pets?") for p in PETS]
    probes += [(f"My favorite hobby is {h}.", h, "what do you like to do for fun?") for h in HOBBIES]
    probes += [(f"I live in {c.title()}.", c, "where do you live?") for c in PLACES]
    probes += [(f"I have two {plural}." if plural.endswith("s") else f"I live with my {one}.", one,
                "tell me about your family") for one, plural in FAMILY]
    return probes


# questions about the bot itself, with words an answer consistent with the default persona contains
SELF_PROBES = [("what do you like?", ("music", "movie", "talk")), ("where do you live?", ("server",)),
               ("what are you?", ("chatbot", "bot")), ("do you like music?", ("yes", "music", "love", "like")),
               ("what do you do for fun?", ("music", "movie", "talk")), ("are you a chatbot?", ("yes", "chatbot", "bot")),
               ("do you like movies?", ("yes", "movie", "love", "like")), ("what's your favorite thing to do?", ("music", "movie", "talk")),
               ("where are you from?", ("server",)), ("what kind of things do you enjoy?", ("music", "movie", "talk")),
               ("tell me about yourself", ("chatbot", "music", "movie", "server", "talk")),
               ("what do you like to talk about?", ("anything", "music", "movie"))]
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|my|me)\b")


def claims(reply: str, key: str) -> bool:
    """Does the bot's reply claim the user's fact (first person and the fact's key word)?"""
    text = reply.lower()
    return bool(_FIRST_PERSON.search(text)) and re.search(rf"\b{re.escape(key)}", text) is not None


async def run(settings: Settings, limit: int) -> dict:
    from bots.fake import FakeAdapter
    from engine.engine import Engine
    async with Engine.from_settings(settings) as engine:
        bot = FakeAdapter(engine)
        confusion = []
        for i, (statement, key, question) in enumerate(confusion_probes()[:limit]):
            await bot.send(f"c{i}", statement)
            reply = (await bot.send(f"c{i}", question)).text
            confusion.append({"statement": statement, "question": question, "reply": reply, "claims": claims(reply, key)})
        selves = []
        for i, (question, words) in enumerate(SELF_PROBES):
            reply = (await bot.send(f"s{i}", question)).text
            selves.append({"question": question, "reply": reply,
                           "consistent": any(re.search(rf"\b{w}", reply.lower()) for w in words)})
    return {"confusion_rate": sum(c["claims"] for c in confusion) / len(confusion), "confusion_probes": len(confusion),
            "self_consistency": sum(s["consistent"] for s in selves) / len(selves), "self_probes": len(selves),
            "persona": list(settings.persona), "confusion": confusion, "self": selves}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--model", type=Path, help="chat model folder (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("bench/results/persona.json"))
    args = p.parse_args(argv)
    with throwaway_settings(args.model) as settings:
        result = asyncio.run(run(settings, args.limit))
    print(f"persona confusion: {100 * result['confusion_rate']:.1f}% of {result['confusion_probes']} probes; "
          f"consistent self-answers: {100 * result['self_consistency']:.1f}% of {result['self_probes']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
