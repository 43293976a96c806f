"""A fake Telegram Bot API server on 127.0.0.1 for end-to-end tests of the real python-telegram-bot.

Implements what the adapter uses: getMe, getUpdates (long polling), sendMessage, sendChatAction,
setMyCommands, setWebhook, deleteWebhook, getWebhookInfo. Tests push updates with
:meth:`FakeTelegramAPI.push_message` and :meth:`FakeTelegramAPI.push_reaction` and read what the bot
sent from :attr:`sent`. ``allowed_updates`` holds what the last getUpdates asked for. ``fail_next``
makes the next calls of a method answer with an HTTP error (429 with retry_after, or 500).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

from . import wait_for_items

BOT_ID = 4242
BOT_USERNAME = "rapport_test_bot"
RAW_STRING_FIELDS = {"text", "url", "secret_token", "action", "description"}


@dataclass
class FakeTelegramAPI:
    """State and handlers of the fake server."""

    token: str = "4242:TEST-token"
    updates: list[dict] = field(default_factory=list)
    sent: list[dict] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    webhook: dict = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_next: dict[str, list[int]] = field(default_factory=dict)
    allowed_updates: list[str] | None = None

    def __post_init__(self) -> None:
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._new_update = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- test side -------------------------------------------------------------------------------
    def message(self, chat_id: int, user_id: int, text: str, chat_type: str = "private",
                first_name: str = "Ana", reply_to: dict | None = None, photo: bool = False) -> dict:
        """An Update carrying a text message (entities for commands and @mentions filled in); with
        ``photo``, a photo whose caption is ``text`` (none when empty)."""
        entities = []
        for i, word in enumerate(text.split(" ")):
            offset = len(" ".join(text.split(" ")[:i])) + (1 if i else 0)
            if word.startswith("/") and offset == 0:
                entities.append({"type": "bot_command", "offset": 0, "length": len(word)})
            elif word.startswith("@") and len(word) > 1:
                entities.append({"type": "mention", "offset": offset, "length": len(word)})
        chat = {"id": chat_id, "type": chat_type}
        if chat_type != "private":
            chat["title"] = "test group"
        msg = {"message_id": next(self._message_ids), "date": int(time.time()), "chat": chat,
               "from": {"id": user_id, "is_bot": False, "first_name": first_name}}
        if photo:
            msg["photo"] = [{"file_id": "p1", "file_unique_id": "u1", "width": 90, "height": 90}]
            if text:
                msg["caption"] = text
                if entities:
                    msg["caption_entities"] = entities
        else:
            msg["text"] = text
            if entities:
                msg["entities"] = entities
        if reply_to is not None:
            msg["reply_to_message"] = reply_to
        return {"update_id": next(self._update_ids), "message": msg}

    def push_message(self, *args, **kwargs) -> dict:
        """Queue an update for getUpdates; returns it."""
        return self._push(self.message(*args, **kwargs))

    def push_reaction(self, chat_id: int, user_id: int, message_id: int, emojis: list[str],
                      old: list[str] | None = None, chat_type: str = "private") -> dict:
        """Queue a message_reaction update: ``user_id`` now has ``emojis`` on message ``message_id``."""
        chat = {"id": chat_id, "type": chat_type, **({"title": "test group"} if chat_type != "private" else {})}
        return self._push({"update_id": next(self._update_ids), "message_reaction": {
            "chat": chat, "message_id": message_id, "date": int(time.time()),
            "user": {"id": user_id, "is_bot": False, "first_name": "Ana"},
            "old_reaction": [{"type": "emoji", "emoji": e} for e in old or []],
            "new_reaction": [{"type": "emoji", "emoji": e} for e in emojis]}})

    def _push(self, update: dict) -> dict:
        self.updates.append(update)
        self._new_update.set()
        return update

    async def wait_sent(self, count: int, timeout: float = 60.0) -> list[dict]:
        """Wait until at least ``count`` messages were sent by the bot."""
        return await wait_for_items(self.sent, count, timeout)

    # --- server side -----------------------------------------------------------------------------
    async def start(self) -> "FakeTelegramAPI":
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _params(self, request: web.Request) -> dict:
        if request.content_type == "application/json":
            return await request.json()
        form = await request.post()
        params = {}
        for key, value in form.items():
            if key in RAW_STRING_FIELDS:
                params[key] = value
            else:
                try:
                    params[key] = json.loads(value)
                except (TypeError, ValueError):
                    params[key] = value
        return params

    async def _dispatch(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params = await self._params(request)
        self.calls.append(method)
        failures = self.fail_next.get(method)
        if failures:
            status = failures.pop(0)
            body = {"ok": False, "error_code": status, "description": "Too Many Requests: retry after 1"
                    if status == 429 else "Internal Server Error"}
            if status == 429:
                body["parameters"] = {"retry_after": 1}
            return web.json_response(body, status=status)
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        return web.json_response({"ok": True, "result": await handler(params)})

    async def _getMe(self, params: dict):
        return {"id": BOT_ID, "is_bot": True, "first_name": "Rapport", "username": BOT_USERNAME,
                "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}

    async def _getUpdates(self, params: dict):
        self.allowed_updates = params.get("allowed_updates")
        offset = int(params.get("offset") or 0)
        self.updates = [u for u in self.updates if u["update_id"] >= offset]
        if not self.updates:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), timeout=min(float(params.get("timeout") or 0), 1.0))
            except asyncio.TimeoutError:
                pass
        return self.updates[: int(params.get("limit") or 100)]

    async def _sendMessage(self, params: dict):
        chat_id = int(params["chat_id"])
        msg = {"message_id": next(self._message_ids), "date": int(time.time()),
               "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
               "from": {"id": BOT_ID, "is_bot": True, "first_name": "Rapport", "username": BOT_USERNAME},
               "text": params["text"]}
        self.sent.append({**params, "chat_id": chat_id, "message": msg})
        return msg

    async def _sendChatAction(self, params: dict):
        self.actions.append(params)
        return True

    async def _setMyCommands(self, params: dict):
        self.commands = params["commands"]
        return True

    async def _setWebhook(self, params: dict):
        self.webhook = params
        return True

    async def _deleteWebhook(self, params: dict):
        self.webhook = {}
        return True

    async def _getWebhookInfo(self, params: dict):
        return {"url": self.webhook.get("url", ""), "has_custom_certificate": False, "pending_update_count": 0}
