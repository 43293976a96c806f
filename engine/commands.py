"""Chat commands, handled once here for every platform.

Matching is pure and exact (:func:`parse_command`, then each command's argument pattern must match the
whole argument text: ``/forget about that`` is not ``/forget``); handling is async and talks to the store.
Admin commands (``/block``, ``/unblock``, ``/stats``) run only for the accounts in RAPPORT_ADMINS.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Awaitable, Callable

from .feedback import rate_sent
from .model.decoding import STYLES
from .model.taste import describe
from .safety import SafetyFilter
from .state.store import Store, UserRef

STYLE_CHOICES = tuple(STYLES)  # the decoding settings the replier has, "balanced" the default
MAX_FACTS = 50
LINK_CODE_TTL_S = 600
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
    is_private: bool = True
    is_admin: bool = False
    safety: SafetyFilter | None = None
    after_forget: Callable[[], None] | None = None  # called once /forget yes has deleted the data
    replied_to: str = ""  # the bot message the command replies to (/good, /bad)


def parse_command(text: str) -> CommandCall | None:
    """Parse ``/name[@bot] args``; None when ``text`` is not a command."""
    match = _COMMAND.match(text.strip())
    if not match:
        return None
    return CommandCall(match.group(1).lower(), re.sub(r"\s+", " ", match.group(2) or "").strip())


Handler = Callable[[CommandContext, str], Awaitable[str]]


@dataclass(frozen=True)
class Command:
    """A registered command: its handler, the pattern its whole argument text must match, its usage."""

    name: str
    help: str
    handler: Handler
    args: re.Pattern[str]
    usage: str
    admin: bool = False


COMMANDS: dict[str, Command] = {}


def command(name: str, help_text: str, args: str = "", usage: str = "", admin: bool = False
            ) -> Callable[[Handler], Handler]:
    """Register a handler under ``/name``; ``args`` is a regex the argument text must match in full
    (case-insensitive; the default takes no arguments)."""
    if not re.fullmatch(r"[a-z_]{1,32}", name):
        raise ValueError(f"invalid command name {name!r}")

    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, help_text, fn, re.compile(args, re.IGNORECASE | re.DOTALL),
                                 usage or f"/{name}", admin)
        return fn

    return register


def public_commands() -> list[Command]:
    """The commands every user may run (what platforms show in their command menus)."""
    return [c for c in COMMANDS.values() if not c.admin]


def help_text(admin: bool = False) -> str:
    """One line per command (admin commands only for admins)."""
    shown = [c for c in COMMANDS.values() if admin or not c.admin]
    return "Commands:\n" + "\n".join(f"/{c.name} - {c.help}" for c in shown)


@command("start", "say hello and see what I can do")
async def _start(ctx: CommandContext, args: str) -> str:
    who = f", {ctx.user_name}" if ctx.user_name else ""
    return (f"Hi{who}! I'm {ctx.bot_name}, a chatbot that remembers what you tell me about yourself. "
            f"Just talk to me.\n\n{help_text(ctx.is_admin)}")


@command("help", "list the commands")
async def _help(ctx: CommandContext, args: str) -> str:
    return help_text(ctx.is_admin)


@command("reset", "forget this conversation (your profile stays)")
async def _reset(ctx: CommandContext, args: str) -> str:
    await ctx.store.clear_history(ctx.ref)
    return "Done: I forgot this conversation. What you told me about yourself is still in /profile."


@command("profile", "show what I know about you; /profile add <fact>, /profile forget <n>",
         args=r"|add .+|forget [0-9]{1,3}", usage="/profile, /profile add <fact> or /profile forget <n>")
async def _profile(ctx: CommandContext, args: str) -> str:
    facts = await ctx.store.facts(ctx.ref)
    action, _, rest = args.partition(" ")
    action, rest = action.lower(), rest.strip()
    if action == "add":
        fact = rest[:200].strip().lower()
        if ctx.safety is not None and not ctx.safety.fact_ok(fact):
            return "I can't keep that in your profile. Tell me something else about yourself."
        if fact not in facts:
            facts = (facts + [fact])[-MAX_FACTS:]
            await ctx.store.set_facts(ctx.ref, facts)
        return f"Added: {fact}"
    if action == "forget":
        if not 1 <= int(rest) <= len(facts):
            return f"Give the number of a fact to forget, between 1 and {len(facts)}." if facts else \
                "There is nothing to forget: I don't know any facts about you."
        removed = facts.pop(int(rest) - 1)
        await ctx.store.set_facts(ctx.ref, facts)
        return f"Forgotten: {removed}"
    prefs = await ctx.store.prefs(ctx.ref)
    _, seen = await ctx.store.vector(ctx.ref)
    lines = ["What I know about you:"]
    lines += [f"{i}. {f}" for i, f in enumerate(facts, 1)] or ["(no facts yet: tell me about yourself)"]
    lines.append(f"Reply style: {prefs.get('style', 'balanced')}")
    lines.append(f"Interest profile: learned from {seen} of your messages" if seen else "Interest profile: empty")
    reactions = (await ctx.store.reactions(ctx.ref)).values()
    lines += describe([r["text"] for r in reactions if r["value"] > 0], [r["text"] for r in reactions if r["value"] < 0])
    return "\n".join(lines)


@command("forget", "delete everything I know about you (asks you to confirm)", args=r"|yes",
         usage="/forget, then /forget yes to confirm")
async def _forget(ctx: CommandContext, args: str) -> str:
    if not args:
        await ctx.store.ask_confirmation(ctx.ref)
        return ("This deletes everything I stored about you: conversations in every chat, facts, interest "
                "profile, your reactions to my replies, preferences and links to your other accounts. It cannot "
                "be undone. To confirm, send /forget yes within 2 minutes.")
    if not await ctx.store.confirmed(ctx.ref):
        return "Send /forget first; then confirm with /forget yes within 2 minutes."
    deleted = await ctx.store.forget_user(ctx.ref)
    if ctx.after_forget is not None:
        ctx.after_forget()
    return (f"Done: I deleted everything I stored about you ({deleted} records: conversations, facts, "
            "interest profile, preferences, links). It's a fresh start.")


async def _rate(ctx: CommandContext, value: int) -> str:
    message_id = ctx.replied_to or await ctx.store.last_sent(ctx.ref)
    if not message_id or not await rate_sent(ctx.store, ctx.ref, message_id, value):
        return ("I can't find that reply of mine any more (I keep them for a week, and only replies to you count). "
                "Try it on a newer one.")
    return ("Thanks! I'll give you more replies like that." if value > 0
            else "Thanks for telling me. I'll try to answer you differently.")


@command("good", "say you liked my reply (reply to it with /good, or just /good for my last one)")
async def _good(ctx: CommandContext, args: str) -> str:
    return await _rate(ctx, 1)


@command("bad", "say you didn't like my reply (reply to it with /bad, or just /bad for my last one)")
async def _bad(ctx: CommandContext, args: str) -> str:
    return await _rate(ctx, -1)


@command("link", "use one profile on Telegram and Discord: /link gives a code, /link <code> uses it",
         args=r"|[A-Za-z0-9]{8}", usage="/link (in a private chat) or /link <8-character code>")
async def _link(ctx: CommandContext, args: str) -> str:
    if not ctx.is_private:
        return "Send /link to me in a private chat: a link code must stay secret."
    code = args.strip().upper()
    if not code:
        code = await ctx.store.create_link_code(ctx.ref, LINK_CODE_TTL_S)
        return (f"Your link code is {code}. Within {LINK_CODE_TTL_S // 60} minutes, send /link {code} to me from "
                "your other account (Telegram or Discord), in a private chat. It works once; don't share it.")
    redeemed = await ctx.store.redeem_link_code(code)
    if redeemed is None:
        return "That code is unknown or has expired. Send /link on your other account to get a new one."
    owner, account = redeemed
    if account == ctx.ref.user or owner == ctx.ref.owner:
        return "These accounts already share one profile. Send the code from your other account."
    await ctx.store.link(ctx.ref, owner, MAX_FACTS)
    return ("Linked: this account now uses the profile of your other account (the facts you told me here were "
            "added to it). /profile shows it; /forget on either account deletes everything.")


@command("export", "get all your data as JSON")
async def _export(ctx: CommandContext, args: str) -> str:
    return json.dumps(await ctx.store.export(ctx.ref), ensure_ascii=False, indent=1)


@command("style", "how I answer: short, long, creative or precise", args=rf"|{'|'.join(STYLE_CHOICES)}",
         usage=f"/style {' | '.join(STYLE_CHOICES)}")
async def _style(ctx: CommandContext, args: str) -> str:
    choice = args.strip().lower()
    if not choice:
        prefs = await ctx.store.prefs(ctx.ref)
        return (f"Your style is {prefs.get('style', 'balanced')}. "
                f"Choose one: /style {' | '.join(STYLE_CHOICES)}")
    await ctx.store.set_pref(ctx.ref, "style", choice)
    return f"OK, from now on my replies are {choice}."


def _account(ctx: CommandContext, args: str) -> str:
    """``platform:id`` from an admin's argument (a bare id means the admin's own platform)."""
    return args if ":" in args else f"{ctx.ref.platform}:{args}"


@command("block", "(admin) stop answering an account: /block <platform:id>", args=r"[A-Za-z0-9_-]+(?::\S+)?",
         usage="/block <platform:user id>", admin=True)
async def _block(ctx: CommandContext, args: str) -> str:
    user = _account(ctx, args)
    changed = await ctx.store.set_blocked(user, True)
    return f"Blocked {user}." if changed else f"{user} was already blocked."


@command("unblock", "(admin) answer a blocked account again: /unblock <platform:id>",
         args=r"[A-Za-z0-9_-]+(?::\S+)?", usage="/unblock <platform:user id>", admin=True)
async def _unblock(ctx: CommandContext, args: str) -> str:
    user = _account(ctx, args)
    changed = await ctx.store.set_blocked(user, False)
    return f"Unblocked {user}." if changed else f"{user} was not blocked."


@command("stats", "(admin) users, messages, reply latency and safety actions", admin=True)
async def _stats(ctx: CommandContext, args: str) -> str:
    data = await ctx.store.stats()
    c, lat = data["counters"], data["latency_ms"]
    safety = {k.removeprefix("safety_"): v for k, v in sorted(c.items()) if k.startswith("safety_")
              and not k.startswith(("safety_layer_", "safety_dropped_"))}
    layers = {k.removeprefix("safety_layer_"): v for k, v in sorted(c.items()) if k.startswith("safety_layer_")}
    dropped = {k.removeprefix("safety_dropped_"): v for k, v in sorted(c.items()) if k.startswith("safety_dropped_")}
    latency = (f"{lat['p50']:.0f} ms p50, {lat['p95']:.0f} ms p95 (latest {lat['n']} replies)" if lat["n"]
               else "no replies yet")
    return "\n".join([
        f"Users: {data['users']} (blocked: {data['blocked']})",
        f"Messages: {c.get('messages', 0)} (replies {c.get('replies', 0)}, commands {c.get('commands', 0)}, "
        f"rate-limited {c.get('rate_limited', 0)}, refused {c.get('refused', 0)})",
        f"Reply latency: {latency}",
        "Safety actions: " + (", ".join(f"{k} {v}" for k, v in safety.items()) or "none"),
        "Safety decisions by layer: " + (", ".join(f"{k} {v}" for k, v in layers.items()) or "none"),
        "Replies with candidates dropped: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"),
    ])


async def run_command(call: CommandCall, ctx: CommandContext) -> str:
    """Run ``call``; unknown commands get the help text, wrong arguments the usage."""
    entry = COMMANDS.get(call.name)
    if entry is None or (entry.admin and not ctx.is_admin):
        return f"I don't know /{call.name}.\n{help_text(ctx.is_admin)}"
    if not entry.args.fullmatch(call.args):
        return f"Usage: {entry.usage}"
    return await entry.handler(ctx, call.args)
