"""Chat commands, handled once here for every platform.

Matching is pure (:func:`parse_command`); handling is async and talks to the store.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Awaitable, Callable

from .store import Store, UserRef

STYLE_CHOICES = ("short", "long", "creative", "precise", "balanced")
MAX_FACTS = 50
_COMMAND = re.compile(r"^/([A-Za-z_]{1,32})(?:@\w+)?(?:\s+(.*))?$", re.DOTALL)


@dataclass(frozen=True)
class CommandCall:
    """A parsed command: ``/profile forget 2`` -> name ``profile``, args ``forget 2``."""

    name: str
    args: str


@dataclass(frozen=True)
class CommandContext:
    """What a command handler may use."""

    store: Store
    ref: UserRef
    bot_name: str
    user_name: str


def parse_command(text: str) -> CommandCall | None:
    """Parse ``/name[@bot] args``; None when ``text`` is not a command."""
    match = _COMMAND.match(text.strip())
    if not match:
        return None
    return CommandCall(match.group(1).lower(), (match.group(2) or "").strip())


Handler = Callable[[CommandContext, str], Awaitable[str]]
COMMANDS: dict[str, tuple[str, Handler]] = {}


def command(name: str, help_text: str) -> Callable[[Handler], Handler]:
    """Register a handler under ``/name``."""
    if not re.fullmatch(r"[a-z_]{1,32}", name):
        raise ValueError(f"invalid command name {name!r}")

    def register(fn: Handler) -> Handler:
        COMMANDS[name] = (help_text, fn)
        return fn

    return register


def help_text() -> str:
    """One line per command."""
    return "Commands:\n" + "\n".join(f"/{name} - {text}" for name, (text, _) in COMMANDS.items())


@command("start", "say hello and see what I can do")
async def _start(ctx: CommandContext, args: str) -> str:
    who = f", {ctx.user_name}" if ctx.user_name else ""
    return (f"Hi{who}! I'm {ctx.bot_name}, a chatbot that remembers what you tell me about yourself. "
            f"Just talk to me.\n\n{help_text()}")


@command("help", "list the commands")
async def _help(ctx: CommandContext, args: str) -> str:
    return help_text()


@command("reset", "forget this conversation (your profile stays)")
async def _reset(ctx: CommandContext, args: str) -> str:
    await ctx.store.clear_history(ctx.ref)
    return "Done: I forgot this conversation. What you told me about yourself is still in /profile."


@command("profile", "show what I know about you; /profile add <fact>, /profile forget <n>")
async def _profile(ctx: CommandContext, args: str) -> str:
    facts = await ctx.store.facts(ctx.ref)
    action, _, rest = args.partition(" ")
    action, rest = action.lower(), rest.strip()
    if action == "add":
        if not rest:
            return "Tell me the fact to add, e.g. /profile add I play the guitar"
        fact = rest[:200].strip().lower()
        if fact not in facts:
            facts = (facts + [fact])[-MAX_FACTS:]
            await ctx.store.set_facts(ctx.ref, facts)
        return f"Added: {fact}"
    if action == "forget":
        if not rest.isdigit() or not 1 <= int(rest) <= len(facts):
            return f"Give the number of a fact to forget, between 1 and {len(facts)}." if facts else \
                "There is nothing to forget: I don't know any facts about you."
        removed = facts.pop(int(rest) - 1)
        await ctx.store.set_facts(ctx.ref, facts)
        return f"Forgotten: {removed}"
    if action:
        return "Use /profile, /profile add <fact> or /profile forget <n>."
    prefs = await ctx.store.prefs(ctx.ref)
    _, seen = await ctx.store.vector(ctx.ref)
    lines = ["What I know about you:"]
    lines += [f"{i}. {f}" for i, f in enumerate(facts, 1)] or ["(no facts yet: tell me about yourself)"]
    lines.append(f"Reply style: {prefs.get('style', 'balanced')}")
    lines.append(f"Interest profile: learned from {seen} of your messages" if seen else "Interest profile: empty")
    return "\n".join(lines)


@command("forget", "delete everything I know about you")
async def _forget(ctx: CommandContext, args: str) -> str:
    deleted = await ctx.store.forget_user(ctx.ref)
    return (f"Done: I deleted everything I stored about you ({deleted} records: conversations, facts, "
            "interest profile, preferences). It's a fresh start.")


LINK_CODE_TTL_S = 600


@command("link", "use one profile on Telegram and Discord: /link gives a code, /link <code> uses it")
async def _link(ctx: CommandContext, args: str) -> str:
    code = args.strip().upper()
    if not code:
        code = await ctx.store.create_link_code(ctx.ref, LINK_CODE_TTL_S)
        return (f"Your link code is {code}. Within {LINK_CODE_TTL_S // 60} minutes, send /link {code} to me from "
                "your other account (Telegram or Discord). It works once; don't share it.")
    owner = await ctx.store.redeem_link_code(code)
    if owner is None:
        return "That code is unknown or has expired. Send /link on your other account to get a new one."
    if owner == ctx.ref.owner:
        return "These accounts already share one profile."
    await ctx.store.link(ctx.ref, owner, MAX_FACTS)
    return ("Linked: this account now uses the profile of your other account (the facts you told me here were "
            "added to it). /profile shows it; /forget on either account deletes everything.")


@command("export", "get all your data as JSON")
async def _export(ctx: CommandContext, args: str) -> str:
    vector, seen = await ctx.store.vector(ctx.ref)
    data = {
        "platform": ctx.ref.platform,
        "user_id": ctx.ref.user_id,
        "facts": await ctx.store.facts(ctx.ref),
        "preferences": await ctx.store.prefs(ctx.ref),
        "history": [t.__dict__ for t in await ctx.store.history(ctx.ref)],
        "profile_vector": None if vector is None else [round(float(x), 5) for x in vector],
        "profile_messages_seen": seen,
    }
    return json.dumps(data, ensure_ascii=False, indent=1)


@command("style", "how I answer: short, long, creative or precise")
async def _style(ctx: CommandContext, args: str) -> str:
    choice = args.strip().lower()
    if choice not in STYLE_CHOICES:
        prefs = await ctx.store.prefs(ctx.ref)
        return (f"Your style is {prefs.get('style', 'balanced')}. "
                f"Choose one: /style {' | '.join(STYLE_CHOICES)}")
    await ctx.store.set_pref(ctx.ref, "style", choice)
    return f"OK, from now on my replies are {choice}."


async def run_command(call: CommandCall, ctx: CommandContext) -> str:
    """Run ``call``; unknown commands get the help text."""
    entry = COMMANDS.get(call.name)
    if entry is None:
        return f"I don't know /{call.name}.\n{help_text()}"
    return await entry[1](ctx, call.args)
