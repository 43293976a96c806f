"""Do replies make sense? An automatic reply-sense evaluation (issue 27).

    python -m bench.reply_sense [--model DIR] [--heldout 300] [--out bench/results/reply_sense.json]

Probes (lines written for this file, in no training data), each from a fresh user through the whole
engine (fake adapter, model, ranker, filters, Redis):
- **tone**: good news must not get sympathy ("sorry", "that's too bad") and bad news must not get cheer
  ("congratulations", "that's great"); a reply fits when it carries no wrong-tone phrase;
- **answers**: a question must be answered, not dodged. A yes/no question is answered by a reply that
  takes a side (yes, no, i do, i love, not really, ...); any question is dodged by a reply that only asks
  back, says it does not know, or is a stock non-answer ("i'll check it out");
- **repeats**: no word repeated back to back ("a chat bot bot");
- **stray self-descriptions**: a sentence about the bot ("i'm a nurse", "i work at ...", "i live in ...")
  that shares no content word with the message, when the message did not ask about the bot.
Repeats, stray self-descriptions and dodged questions are also counted on greedy replies to held-out
conversations (Synthetic-Persona-Chat's test half, seed 0, with both speakers' persona lines).

The checks are plain functions (``wrong_tone``, ``answers``, ``dodges``, ``repeated_word``,
``stray_self_description``) so any model's replies can be scored the same way.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
from pathlib import Path

from engine.config import Settings
from engine.facts import content_words

from .throwaway import throwaway_settings

GOOD_NEWS = [
    "i just got promoted at work!", "we're having a baby!", "i passed my driving test today",
    "i got into my dream college!", "my sister just got engaged", "i finally finished my first marathon",
    "i got the job!", "we just bought our first house", "my exam results came back and i got an a",
    "i won a prize in a photography contest", "my best friend is visiting me this weekend, i can't wait",
    "i just adopted a puppy!", "my paper got accepted", "i'm getting married next month",
    "i got a raise today", "my team won the championship last night", "i just paid off my student loans",
    "my daughter took her first steps today", "i lost twenty pounds this year", "i got a scholarship!",
    "my band is playing its first real gig on friday", "i just came back from an amazing trip to japan",
    "my surgery went really well and i'm recovering fast", "i finally learned to swim",
    "my book is getting published", "i just got a new job as a nurse!", "i'm going to be an uncle!",
    "i passed the bar exam", "my garden finally has tomatoes", "i beat my personal record at the gym today",
]
BAD_NEWS = [
    "my dog died yesterday.", "i lost my job today", "i failed my exam", "my grandmother passed away last week",
    "my girlfriend broke up with me", "i didn't get the job", "my car broke down again and i can't afford it",
    "i've been feeling really lonely lately", "my house got broken into", "i broke my leg skiing",
    "my best friend moved away", "my cat is very sick", "i got rejected from every college i applied to",
    "my parents are getting divorced", "i had a terrible day at work", "i lost my wallet with all my cards",
    "my flight got cancelled and i missed my sister's wedding", "my grandfather is in the hospital",
    "i got laid off this morning", "i'm so stressed, i can't sleep", "my startup failed",
    "our team lost the final", "i have the flu and feel awful", "my phone got stolen",
    "i got a really bad grade on my thesis", "my uncle has cancer", "i missed my daughter's recital because of work",
    "my bike was stolen today", "my landlord is evicting me", "i think i'm going to fail this class",
]
# (question, kind): "yn" questions need a side taken; "wh" questions need anything but a dodge
QUESTIONS = [
    ("do you like jazz?", "yn"), ("do you have any pets?", "yn"), ("do you like to cook?", "yn"),
    ("have you ever been to paris?", "yn"), ("do you play any sports?", "yn"), ("are you a morning person?", "yn"),
    ("do you like horror movies?", "yn"), ("can you swim?", "yn"), ("do you like rainy days?", "yn"),
    ("do you prefer cats or dogs?", "wh"), ("can you recommend a good book?", "wh"),
    ("what's your favorite food?", "wh"), ("what kind of music do you like?", "wh"),
    ("what should i cook for dinner tonight?", "wh"), ("what's a good movie to watch this weekend?", "wh"),
    ("what do you do when you can't sleep?", "wh"), ("what's your favorite season?", "wh"),
    ("where would you go on vacation?", "wh"), ("what's the best way to learn a language?", "wh"),
    ("how do you relax after a long day?", "wh"), ("what's your favorite color?", "wh"),
    ("which do you like better, summer or winter?", "wh"), ("what hobby should i pick up?", "wh"),
    ("how was your weekend?", "wh"), ("what are you doing today?", "wh"), ("what's your favorite animal?", "wh"),
    ("tea or coffee?", "wh"), ("what's a fun thing to do on a rainy day?", "wh"),
    ("any tips for staying motivated?", "wh"), ("what's your favorite thing about summer?", "wh"),
]
NEUTRAL = [
    "i'm so bored", "i went to the grocery store today", "it's raining here", "i just made some pasta",
    "i watched a documentary about whales", "my neighbor is painting his fence", "i'm drinking coffee",
    "i have to clean my room today", "traffic was slow this morning", "i'm reading a book about space",
    "i like to walk in the park", "i'm thinking about learning the guitar", "the weather is nice today",
    "i'm going to the beach tomorrow", "i stayed up late last night", "i just finished my homework",
    "i'm trying a new recipe tonight", "i saw a funny movie yesterday", "my coffee is cold", "i love sunny days",
]

_SYMPATHY = re.compile(r"\b(sorry|so sad|too bad|that sucks|condolences|terrible|awful|unfortunate|"
                       r"hope (?:you|it|things) (?:feel|get|gets) better|hang in there|poor you|that's rough|"
                       r"that's hard|heartbreaking|sad to hear)\b")
_CHEER = re.compile(r"\b(congrat\w*|that's (?:so )?(?:great|awesome|amazing|wonderful|fantastic|exciting|cool)|"
                    r"how exciting|so exciting|awesome|yay|happy for you|good for you|well done|"
                    r"that's good news|great news|proud of you|lucky you|amazing|wonderful)\b")
_SIDE = re.compile(r"\b(yes|yeah|yep|yup|sure|of course|definitely|absolutely|no|nope|nah|not really|never|"
                   r"i do|i don't|i dont|i did|i didn't|i have|i haven't|i am|i'm not|i can|i can't|"
                   r"i love|i like|i enjoy|i hate|i prefer|not a fan|big fan|i'd rather|my favorite|"
                   r"i'm a (?:huge |big )?fan|sometimes|love (?:it|them)|like (?:it|them))\b")
_DODGE = re.compile(r"\b(i don't know|i dont know|i'm not sure|im not sure|no idea|i'll (?:check|look) (?:it|that) out|"
                    r"i will (?:check|look) (?:it|that) out|hard to say|i can't say|i have no idea|not sure)\b")
_SELF = re.compile(r"^(?:i'm|i am|im) (?:a|an)\b|^i work (?:as|at|in)\b|^i live in\b|^i'm from\b|^i am from\b|"
                   r"^my name is\b|^i have (?:a|an|two|three)\b(?! question| idea| feeling)|^i'm (?:a|an) \w+ (?:by|from)\b")
_ABOUT_BOT = re.compile(r"\b(you|your|yourself)\b")
_REPEAT = re.compile(r"\b(\w+)\s+\1\b(?![-'])", re.IGNORECASE)  # "good good-bye" is no repeat
_SENTENCES = re.compile(r"[^.!?]+[.!?]*")


def _norm(text: str) -> str:
    return text.lower().replace("’", "'")


def wrong_tone(reply: str, good_news: bool) -> bool:
    """Sympathy to good news, or cheer to bad news."""
    return bool((_SYMPATHY if good_news else _CHEER).search(_norm(reply)))


def dodges(reply: str) -> bool:
    """A non-answer: only a question back, "i don't know"-style, or a stock "i'll check it out"."""
    text = _norm(reply).strip()
    statements = [s for s in _SENTENCES.findall(text) if s.strip() and not s.strip().endswith("?")]
    return not statements or bool(_DODGE.search(text))


_ASKED_VERB = re.compile(r"^(?:do|can|did|will|would) you (\w+)")


def answers(question: str, kind: str, reply: str) -> bool:
    """Does ``reply`` answer ``question``? A yes/no question needs a side taken (a yes or a no, a stated
    liking, or the asked verb said of itself: "do you play ...?" -> "i play ..."); any question, no dodge."""
    if dodges(reply):
        return False
    if kind != "yn":
        return True
    text = _norm(reply)
    verb = _ASKED_VERB.search(_norm(question))
    return bool(_SIDE.search(text)) or bool(verb and re.search(rf"\bi (?:\w+ )?{verb.group(1)}\b", text))


def repeated_word(reply: str) -> bool:
    """The same word twice back to back ("bot bot", "i i")."""
    return bool(_REPEAT.search(reply))


def stray_self_description(message: str, reply: str) -> bool:
    """A sentence describing the bot that shares no content word with a message that did not ask about it."""
    if _ABOUT_BOT.search(_norm(message)):
        return False
    said = content_words(message)
    for sentence in _SENTENCES.findall(_norm(reply)):
        sentence = sentence.strip()
        if _SELF.search(sentence) and not (content_words(sentence) & said):
            return True
    return False


async def probe_replies(settings: Settings) -> dict[str, list[dict]]:
    """Every probe from a fresh user through the engine."""
    from bots.fake import FakeAdapter
    from engine.engine import Engine

    out: dict[str, list[dict]] = {"good": [], "bad": [], "questions": [], "neutral": []}
    async with Engine.from_settings(settings) as engine:
        bot = FakeAdapter(engine)

        async def ask(user: str, line: str) -> str:
            return (await bot.send(user, line)).text

        for i, line in enumerate(GOOD_NEWS):
            out["good"].append({"message": line, "reply": await ask(f"g{i}", line)})
        for i, line in enumerate(BAD_NEWS):
            out["bad"].append({"message": line, "reply": await ask(f"b{i}", line)})
        for i, (line, kind) in enumerate(QUESTIONS):
            out["questions"].append({"message": line, "kind": kind, "reply": await ask(f"q{i}", line)})
        for i, line in enumerate(NEUTRAL):
            out["neutral"].append({"message": line, "reply": await ask(f"n{i}", line)})
    return out


def score_probes(found: dict[str, list[dict]]) -> dict:
    """The probe metrics, and each reply marked."""
    for row in found["good"]:
        row["fits"] = not wrong_tone(row["reply"], good_news=True)
    for row in found["bad"]:
        row["fits"] = not wrong_tone(row["reply"], good_news=False)
    for row in found["questions"]:
        row["answered"] = answers(row["message"], row["kind"], row["reply"])
    rows = [r for part in found.values() for r in part]
    for row in rows:
        row["repeat"] = repeated_word(row["reply"])
        row["stray_self"] = stray_self_description(row["message"], row["reply"])
    tone = found["good"] + found["bad"]
    return {
        "tone_fit": sum(r["fits"] for r in tone) / len(tone),
        "good_news_fit": sum(r["fits"] for r in found["good"]) / len(found["good"]),
        "bad_news_fit": sum(r["fits"] for r in found["bad"]) / len(found["bad"]),
        "answered": sum(r["answered"] for r in found["questions"]) / len(found["questions"]),
        "repeat_replies": sum(r["repeat"] for r in rows),
        "stray_self": sum(r["stray_self"] for r in rows) / len(rows),
        "probes": len(rows),
    }


def heldout_replies(model: Path, n: int, seed: int = 0) -> list[dict]:
    """Greedy engine replies (the replier, no engine state) to ``n`` held-out persona-test turns."""
    from engine.config import DEFAULT_ENCODER, DEFAULT_INDEX
    from engine.model.replier import ReplyRequest, Replier
    from training.examples import turns_of
    from training.persona import load_persona_splits, persona_examples

    examples = [ex for c in load_persona_splits()["test"] for ex in persona_examples(c)]
    picked = random.Random(seed).sample(examples, n)
    replier = Replier.from_dirs(model, DEFAULT_ENCODER, index_dir=DEFAULT_INDEX)
    out = []
    for start in range(0, n, 25):
        batch = picked[start: start + 25]
        requests = [ReplyRequest(turns_of(ex), list(ex.bot_facts), list(ex.user_facts), None) for ex in batch]
        for ex, (reply, _) in zip(batch, replier.reply_batch(requests)):
            out.append({"message": ex.context[-1], "reply": reply.text if reply else ""})
    return out


def score_heldout(rows: list[dict]) -> dict:
    """Repeats, stray self-descriptions and dodged questions among held-out replies."""
    asked = [r for r in rows if r["message"].strip().endswith("?")]
    return {"repeat_replies": sum(repeated_word(r["reply"]) for r in rows),
            "stray_self": sum(stray_self_description(r["message"], r["reply"]) for r in rows) / len(rows),
            "questions": len(asked), "dodged": sum(dodges(r["reply"]) for r in asked) / max(1, len(asked)),
            "replies": len(rows)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="chat model folder (default: the shipped one)")
    p.add_argument("--heldout", type=int, default=300, help="held-out persona-test turns (0: none)")
    p.add_argument("--out", type=Path, default=Path("bench/results/reply_sense.json"))
    args = p.parse_args(argv)
    with throwaway_settings(args.model) as settings:
        found = asyncio.run(probe_replies(settings))
        model = settings.model_dir
    result = {"model": str(model), "probes": score_probes(found), "probe_replies": found}
    if args.heldout:
        rows = heldout_replies(model, args.heldout)
        result |= {"heldout": score_heldout(rows), "heldout_replies": rows}
    p_ = result["probes"]
    print(f"{model}: tone fits {100 * p_['tone_fit']:.1f}% (good news {100 * p_['good_news_fit']:.0f}%, bad news "
          f"{100 * p_['bad_news_fit']:.0f}%), questions answered {100 * p_['answered']:.1f}%, replies with a repeated "
          f"word {p_['repeat_replies']} of {p_['probes']}, stray self-descriptions {100 * p_['stray_self']:.1f}%")
    if args.heldout:
        h = result["heldout"]
        print(f"held-out ({h['replies']} persona-test turns): repeated word {h['repeat_replies']}, stray "
              f"self-descriptions {100 * h['stray_self']:.1f}%, dodged {100 * h['dodged']:.1f}% of {h['questions']} questions")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
