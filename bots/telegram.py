"""Telegram adapter on python-telegram-bot v22: long polling or webhook, one engine call per message.

Private chats get an answer to every text message; groups only when the bot is @mentioned, replied
to, or sent a command addressed to it. Replies are plain text (user text can never inject markup),
split at 4,096 characters on line or sentence boundaries, with "typing…" refreshed while the engine
works. Flood control is the library's AIORateLimiter (it also retries on 429 "retry after").

Reactions (👍, 👎, ...) to the bot's replies are asked for in ``allowed_updates`` and reach the engine as
feedback. Telegram sends them in private chats; in groups only to a bot that is an administrator there.
"""
from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager, suppress
from typing import AsyncIterator

from telegram import BotCommand, ReplyParameters, Update
from telegram.constants import ChatAction, ChatType, MessageEntityType
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import (AIORateLimiter, Application, ApplicationBuilder, ContextTypes, MessageHandler,
                          MessageReactionHandler, filters)

from engine.commands import public_commands
from engine.config import ConfigError
from engine.log_privacy import protect_logs
from engine.feedback import reaction_value
from engine.messages import IncomingMessage, NOT_TEXT, OutgoingMessage, Reaction, Responder

from .settings import TelegramSettings
from .split import split_message

PLATFORM = "telegram"
MESSAGE_LIMIT = 4096
TYPING_EVERY_S = 4.0
SORRY = "Sorry, something went wrong on my side. Please try again in a moment."
SEND_ATTEMPTS = 4
UPDATES = [Update.MESSAGE, Update.MESSAGE_REACTION]  # message_reaction is off unless asked for
log = logging.getLogger(__name__)


class TelegramAdapter:
    """Telegram updates -> ``IncomingMessage`` -> engine -> plain-text replies."""

    def __init__(self, engine: Responder, settings: TelegramSettings) -> None:
        if not settings.token:
            raise ConfigError("TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather and put its token "
                              "in the environment or in .env")
        if settings.mode == "webhook" and not settings.webhook_secret:
            raise ConfigError("RAPPORT_TELEGRAM_MODE=webhook needs RAPPORT_TELEGRAM_WEBHOOK_SECRET (1-256 characters "
                              "A-Z a-z 0-9 _ -): without it anyone who learns the URL can post forged updates")
        protect_logs(settings.token, settings.webhook_secret)
        self.engine = engine
        self.settings = settings
        api = settings.api_url.rstrip("/")
        self.app: Application = (
            ApplicationBuilder().token(settings.token)
            .base_url(f"{api}/bot").base_file_url(f"{api}/file/bot")
            .rate_limiter(AIORateLimiter(max_retries=3))
            .concurrent_updates(True)
            .build())
        self.app.add_handler(MessageHandler(filters.UpdateType.MESSAGE, self.on_message))
        self.app.add_handler(MessageReactionHandler(self.on_reaction))
        self.app.add_error_handler(self.on_error)

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the token (getMe), register the commands and start polling or the webhook server."""
        try:
            await self.app.initialize()
        except InvalidToken as exc:
            raise ConfigError(f"Telegram rejected TELEGRAM_BOT_TOKEN ({exc}); check the token from @BotFather") from exc
        await self.app.bot.set_my_commands([BotCommand(c.name, c.help[:256]) for c in public_commands()])
        await self.app.start()
        s = self.settings
        if s.mode == "webhook":
            if not s.webhook_url:
                raise ConfigError("RAPPORT_TELEGRAM_MODE=webhook needs RAPPORT_TELEGRAM_WEBHOOK_URL (the public https URL)")
            path = s.webhook_url.split("://", 1)[-1].partition("/")[2]
            try:
                await self.app.updater.start_webhook(listen=s.webhook_listen, port=s.webhook_port,
                                                     url_path=path, webhook_url=s.webhook_url,
                                                     secret_token=s.webhook_secret, allowed_updates=UPDATES)
            except OSError as exc:
                await self.app.stop()
                raise ConfigError(f"cannot listen for the webhook on {s.webhook_listen}:{s.webhook_port} "
                                  f"({exc.strerror or exc}): another program has the port; free it or set "
                                  "RAPPORT_TELEGRAM_WEBHOOK_PORT") from exc
        else:
            await self.app.updater.start_polling(poll_interval=0.0, timeout=s.poll_timeout_s, allowed_updates=UPDATES)
        log.info("telegram bot @%s is running (%s)", self.app.bot.username, s.mode)

    async def connected(self) -> bool:
        """Readiness: the application runs and receives updates (polling or webhook)."""
        return self.app.running and self.app.updater is not None and self.app.updater.running

    async def stop(self) -> None:
        """Stop fetching updates, finish the running handlers, close the HTTP session."""
        if self.app.updater and self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()

    # --- handlers ----------------------------------------------------------------------------------
    def addressed_text(self, update: Update) -> str | None:
        """The text (or media caption) meant for the bot, "" for a private message without text, or None
        when the bot should stay silent (pure, no I/O)."""
        msg = update.effective_message
        if msg is None or update.effective_user is None:
            return None
        text = msg.text or msg.caption
        if msg.chat.type == ChatType.PRIVATE:
            return text or ""
        if not text:
            return None
        me = (self.app.bot.username or "").lower()
        command = re.match(r"^/\w+@(\w+)", text)
        if command:
            return text if command.group(1).lower() == me else None
        entities = msg.entities if msg.text else msg.caption_entities
        mentions = [text[e.offset: e.offset + e.length] for e in entities or () if e.type == MessageEntityType.MENTION]
        if any(m.lower() == f"@{me}" for m in mentions):
            return re.sub(rf"@{re.escape(me)}\b", "", text, flags=re.IGNORECASE).strip()
        replied = msg.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == self.app.bot.id:
            return text
        return None

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Answer one text message."""
        text = self.addressed_text(update)
        if text is None:
            return
        msg, user = update.effective_message, update.effective_user
        if not text:
            await self.send(msg.chat.id, NOT_TEXT, None)
            return
        replied = msg.reply_to_message
        incoming = IncomingMessage(PLATFORM, str(msg.chat.id), str(user.id), text, user_name=user.first_name or "",
                                   message_id=str(msg.message_id), timestamp=msg.date.timestamp(),
                                   is_private=msg.chat.type == ChatType.PRIVATE,
                                   replied_to=str(replied.message_id) if replied is not None else "")
        async with self.typing(msg.chat.id):
            out = await self.engine.handle(incoming)
        if out.silent:
            return
        reply_to = None if incoming.is_private else ReplyParameters(msg.message_id, allow_sending_without_reply=True)
        await self.engine.sent(out, await self.send_text(msg.chat.id, out.text, reply_to))

    async def on_reaction(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A person's reaction to a message: feedback for the engine (anonymous reactions are skipped)."""
        reaction = update.message_reaction
        if reaction is None or reaction.user is None:
            return
        emojis = [r.emoji for r in reaction.new_reaction if getattr(r, "emoji", None)]
        await self.engine.react(Reaction(PLATFORM, str(reaction.chat.id), str(reaction.user.id),
                                         str(reaction.message_id), reaction_value(emojis)))

    async def deliver(self, out: OutgoingMessage) -> None:
        """Send a reply that arrived late (split mode)."""
        await self.engine.sent(out, await self.send_text(int(out.chat_id), out.text, None))

    async def send_text(self, chat_id: int, text: str, reply_to: ReplyParameters | None) -> list[str]:
        """Send ``text`` in pieces of at most MESSAGE_LIMIT characters; the ids of the messages sent."""
        return [await self.send(chat_id, piece, reply_to) for piece in split_message(text, MESSAGE_LIMIT)]

    async def send(self, chat_id: int, text: str, reply_to: ReplyParameters | None) -> str:
        """Send one piece (returns its message id); server errors and timeouts are retried with backoff (429s
        are the rate limiter's job), so the engine's answer is not lost to a passing Telegram hiccup."""
        for attempt in range(SEND_ATTEMPTS):
            try:
                return str((await self.app.bot.send_message(chat_id, text, reply_parameters=reply_to)).message_id)
            except NetworkError:
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5 * 2**attempt)

    @asynccontextmanager
    async def typing(self, chat_id: int) -> AsyncIterator[None]:
        """Show "typing…" in ``chat_id`` until the block ends (Telegram shows it for 5 s per call)."""
        async def refresh() -> None:
            while True:
                with suppress(TelegramError):
                    await self.app.bot.send_chat_action(chat_id, ChatAction.TYPING)
                await asyncio.sleep(TYPING_EVERY_S)

        task = asyncio.create_task(refresh())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log the error (the update's id and type only, never its text); tell the user politely."""
        kind = next((k for k in ("message", "edited_message", "callback_query", "message_reaction")
                     if isinstance(update, Update) and getattr(update, k, None) is not None), type(update).__name__)
        update_id = update.update_id if isinstance(update, Update) else None
        log.error("telegram update %s (%s) failed: %s", update_id, kind, type(context.error).__name__,
                  exc_info=context.error)
        if isinstance(update, Update) and update.effective_chat is not None:
            with suppress(TelegramError):
                await context.bot.send_message(update.effective_chat.id, SORRY)


async def run_telegram(adapter: TelegramAdapter, stop: asyncio.Event) -> None:
    """Run the adapter until ``stop`` is set."""
    await adapter.start()
    try:
        await stop.wait()
    finally:
        await adapter.stop()
