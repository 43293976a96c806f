"""Discord adapter on discord.py 2.x: direct messages, @mentions in server channels, slash commands.

Needs the privileged *message content* intent (Developer Portal -> Bot -> Privileged Gateway Intents)
to read the text of server messages that mention the bot. Slash commands (/chat, /profile, /reset,
/forget, /link) defer at once, so Discord's 3-second deadline is never missed however long the engine
takes; all but /chat answer ephemerally (only the caller sees them). Every reply is
split at 2,000 characters and sent with ``AllowedMentions.none()``: a reply can never ping
@everyone, roles or users. The REST and gateway URLs are configurable (proxies, tests). Reactions to
the bot's replies (in DMs and servers: the default intents carry them) reach the engine as feedback, as do
/good and /bad.
"""
from __future__ import annotations

import asyncio
import logging
import re

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from engine.config import ConfigError
from engine.log_privacy import protect_logs
from engine.feedback import reaction_value
from engine.messages import IncomingMessage, NOT_TEXT, OutgoingMessage, Reaction, Responder

from .settings import DiscordSettings
from .split import split_message

PLATFORM = "discord"
MESSAGE_LIMIT = 2000
NO_PINGS = discord.AllowedMentions.none()
log = logging.getLogger(__name__)


def point_at(api_url: str, gateway_url: str) -> None:
    """Send discord.py's REST calls and gateway connection to these URLs (process-wide)."""
    discord.http.Route.BASE = api_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class RapportDiscordClient(discord.Client):
    """Discord events -> ``IncomingMessage`` -> engine -> replies that cannot ping anyone."""

    def __init__(self, engine: Responder, settings: DiscordSettings) -> None:
        if not settings.token:
            raise ConfigError("DISCORD_BOT_TOKEN is not set: create an application in the Discord Developer "
                              "Portal, add a bot, and put its token in the environment or in .env")
        protect_logs(settings.token)
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, allowed_mentions=NO_PINGS)
        point_at(settings.api_url, settings.gateway_url)
        self.engine = engine
        self.settings = settings
        self.tree = app_commands.CommandTree(self)
        self._add_slash_commands()

    def _add_slash_commands(self) -> None:
        @self.tree.command(name="chat", description="talk to me")
        @app_commands.describe(message="what you want to say")
        async def chat(interaction: discord.Interaction, message: str) -> None:
            await self.answer_interaction(interaction, message, ephemeral=False)

        @self.tree.command(name="link", description="use one profile on Discord and Telegram")
        @app_commands.describe(code="the code /link gave you on your other account (empty: get a code)")
        async def link(interaction: discord.Interaction, code: str | None = None) -> None:
            await self.answer_interaction(interaction, f"/link {code or ''}".strip(), ephemeral=True)

        @self.tree.command(name="forget", description="delete everything I know about you")
        @app_commands.describe(confirm="type yes to confirm (without it I ask first)")
        async def forget(interaction: discord.Interaction, confirm: str | None = None) -> None:
            await self.answer_interaction(interaction, f"/forget {confirm or ''}".strip(), ephemeral=True)

        for name, text in (("profile", "show what I know about you"),
                           ("reset", "forget this conversation (your profile stays)"),
                           ("good", "say you liked my last reply"), ("bad", "say you didn't like my last reply")):
            async def callback(interaction: discord.Interaction, _name: str = name) -> None:
                await self.answer_interaction(interaction, f"/{_name}", ephemeral=True)
            self.tree.command(name=name, description=text)(callback)

    async def setup_hook(self) -> None:
        """Register the slash commands with Discord."""
        await self.tree.sync()

    # --- events --------------------------------------------------------------------------------------
    async def connected(self) -> bool:
        """Readiness: logged in and the gateway session is ready."""
        return self.is_ready() and not self.is_closed()

    def addressed_text(self, message: discord.Message) -> str | None:
        """The text meant for the bot, or None when it should stay silent (pure, no I/O)."""
        if message.author.bot or self.user is None:
            return None
        if message.guild is None:
            return message.content
        replied = message.reference.resolved if message.reference else None
        if self.user in message.mentions or (isinstance(replied, discord.Message) and replied.author == self.user):
            return re.sub(rf"<@!?{self.user.id}>", "", message.content).strip()
        return None

    async def on_message(self, message: discord.Message) -> None:
        """Answer a DM, a mention or a reply to the bot."""
        text = self.addressed_text(message)
        if text is None:
            return
        if not text and message.attachments:
            await message.channel.send(NOT_TEXT, allowed_mentions=NO_PINGS)
            return
        replied = message.reference.message_id if message.reference else None
        incoming = IncomingMessage(PLATFORM, str(message.channel.id), str(message.author.id), text,
                                   user_name=message.author.display_name, message_id=str(message.id),
                                   timestamp=message.created_at.timestamp(), is_private=message.guild is None,
                                   replied_to=str(replied) if replied else "")
        async with message.channel.typing():
            out = await self.engine.handle(incoming)
        if out.silent:
            return
        reference = message if message.guild is not None else None  # in servers, the first piece replies to it
        await self.engine.sent(out, await send_pieces(message.channel.send, out.text, reference=reference,
                                                      mention_author=False))

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """A reaction added to a message: feedback for the engine (the bot's own reactions are skipped)."""
        await self._reaction(payload, reaction_value([payload.emoji.name or ""]))

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        """A reaction taken back: the reply is no longer rated."""
        await self._reaction(payload, 0)

    async def _reaction(self, payload: discord.RawReactionActionEvent, value: int) -> None:
        if self.user is not None and payload.user_id != self.user.id:
            await self.engine.react(Reaction(PLATFORM, str(payload.channel_id), str(payload.user_id),
                                             str(payload.message_id), value))

    async def deliver(self, out: OutgoingMessage) -> None:
        """Send a reply that arrived late (split mode) to its channel, in pieces."""
        channel = self.get_channel(int(out.chat_id)) or await self.fetch_channel(int(out.chat_id))
        await self.engine.sent(out, await send_pieces(channel.send, out.text))

    async def answer_interaction(self, interaction: discord.Interaction, text: str, ephemeral: bool) -> None:
        """Defer at once (Discord's 3-second deadline), ask the engine, send the answer as follow-ups."""
        await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        incoming = IncomingMessage(PLATFORM, str(interaction.channel_id), str(interaction.user.id), text,
                                   user_name=interaction.user.display_name, message_id=str(interaction.id),
                                   is_private=interaction.guild_id is None)
        out = await self.engine.handle(incoming)
        if out.silent:
            return
        await self.engine.sent(out, await send_pieces(interaction.followup.send, out.text, ephemeral=ephemeral))

    async def on_error(self, event: str, *args, **kwargs) -> None:
        log.exception("discord event %s failed", event)


async def send_pieces(send, text: str, reference: discord.Message | None = None, **kwargs) -> list[str]:
    """``send`` (a channel's or an interaction's) ``text`` in pieces of at most MESSAGE_LIMIT characters,
    pinging nobody; only the first piece carries ``reference``. Returns the ids of the messages sent."""
    ids = []
    for i, piece in enumerate(split_message(text, MESSAGE_LIMIT)):
        extra = {"reference": reference} if i == 0 and reference is not None else {}
        sent = await send(piece, allowed_mentions=NO_PINGS, **extra, **kwargs)
        if sent is not None:
            ids.append(str(sent.id))
    return ids


async def run_discord(client: RapportDiscordClient, stop: asyncio.Event) -> None:
    """Run the bot until ``stop`` is set; a rejected token or a refused intent is a clear error."""
    try:
        await client.login(client.settings.token)
    except discord.LoginFailure as exc:
        await client.close()
        raise ConfigError(f"Discord rejected DISCORD_BOT_TOKEN ({exc}); copy the bot token from the "
                          "Developer Portal again") from exc
    connection = asyncio.create_task(client.connect())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({connection, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await client.close()
        stopped.cancel()
        if connection.done() and isinstance(connection.exception(), discord.PrivilegedIntentsRequired):
            raise ConfigError("Discord refused the Message Content intent (close code 4014): enable it in the "
                              "Developer Portal, Bot > Privileged Gateway Intents > Message Content Intent, "
                              "then start the bot again") from connection.exception()
        if connection.done() and connection.exception():
            raise connection.exception()
