"""A fake Discord REST API + gateway on 127.0.0.1 for end-to-end tests of the real discord.py.

Gateway (``ws://127.0.0.1:PORT/``): HELLO, IDENTIFY (token checked), READY, GUILD_CREATE for one
test guild, heartbeat ACKs, then whatever the test dispatches (MESSAGE_CREATE, INTERACTION_CREATE).
REST (``http://127.0.0.1:PORT/api/v10``): users/@me, oauth2/applications/@me, application command
sync, channel messages and typing, interaction callbacks and webhook follow-ups. JSON answers carry
a bare ``Content-Type: application/json`` (discord.py ignores JSON sent with a charset).
``fail_next[(method, path_prefix)]`` makes the next matching calls answer with an HTTP error.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from aiohttp import WSMsgType, web

from . import wait_for_items

BOT_ID, APP_ID, GUILD_ID, CHANNEL_ID = 9000, 9001, 9100, 9200


def _user(uid: int, name: str, bot: bool = False) -> dict:
    return {"id": str(uid), "username": name, "discriminator": "0", "global_name": name, "avatar": None,
            "bot": bot, "public_flags": 0}


BOT_USER = _user(BOT_ID, "rapport", bot=True)
MESSAGE_CONTENT_INTENT = 1 << 15


def _json(data, status: int = 200) -> web.Response:
    # "Via" as Discord sends it: discord.py treats a 429 without it as a Cloudflare ban and gives up
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json", "Via": "1.1 google"})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class FakeDiscord:
    """State and handlers of the fake server."""

    token: str = "discord-test-token"
    sent: list[dict] = field(default_factory=list)        # channel messages and follow-ups the bot sent
    callbacks: list[dict] = field(default_factory=list)   # interaction responses (defer etc.)
    typing: list[str] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    fail_next: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    refuse_privileged_intents: bool = False  # the Message Content intent is off in the Developer Portal

    def __post_init__(self) -> None:
        self._ids = itertools.count(100_000)
        self._seq = itertools.count(1)
        self._ws: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.ready = asyncio.Event()
        self.url = ""

    # --- test side -------------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/"

    def next_id(self) -> int:
        return next(self._ids)

    async def dispatch(self, event: str, data: dict) -> None:
        await self.ready.wait()
        await self._ws.send_str(json.dumps({"op": 0, "t": event, "s": next(self._seq), "d": data}))

    async def message(self, user_id: int, content: str, guild: bool = False, name: str = "ana",
                      mentions_bot: bool = False, reply_to: dict | None = None, channel_id: int | None = None,
                      attachment: bool = False) -> dict:
        """Dispatch a MESSAGE_CREATE (DM unless ``guild``); returns its payload."""
        data = {"id": str(self.next_id()), "channel_id": str(channel_id or (CHANNEL_ID if guild else 50_000 + user_id)),
                "author": _user(user_id, name), "content": content, "timestamp": _now(), "edited_timestamp": None,
                "tts": False, "mention_everyone": False, "mentions": [BOT_USER] if mentions_bot else [],
                "mention_roles": [], "attachments": [], "embeds": [], "pinned": False, "type": 0, "flags": 0}
        if attachment:
            data["attachments"] = [{"id": str(self.next_id()), "filename": "cat.png", "size": 10, "url": "http://x/cat.png",
                                    "proxy_url": "http://x/cat.png", "content_type": "image/png"}]
        if guild:
            data["guild_id"] = str(GUILD_ID)
            data["member"] = {"roles": [], "joined_at": _now(), "deaf": False, "mute": False, "flags": 0}
        if reply_to is not None:
            data["message_reference"] = {"message_id": reply_to["id"], "channel_id": reply_to["channel_id"]}
            data["referenced_message"] = reply_to
            data["type"] = 19
        await self.dispatch("MESSAGE_CREATE", data)
        return data

    async def reaction(self, user_id: int, message: dict, emoji: str, add: bool = True) -> None:
        """Dispatch MESSAGE_REACTION_ADD (or _REMOVE) by ``user_id`` on ``message`` (a message payload)."""
        data = {"user_id": str(user_id), "channel_id": message["channel_id"], "message_id": message["id"],
                "emoji": {"id": None, "name": emoji}, "type": 0, "burst": False}
        if add:
            data.update(burst_colors=[], message_author_id=message["author"]["id"])
        await self.dispatch("MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", data)

    async def slash(self, user_id: int, name: str, options: dict | None = None, guild: bool = True) -> dict:
        """Dispatch an INTERACTION_CREATE for slash command ``name``; returns its payload."""
        data = {"id": str(self.next_id()), "application_id": str(APP_ID), "type": 2, "token": f"itok{self.next_id()}",
                "version": 1, "locale": "en-US", "app_permissions": "0", "entitlements": [],
                "authorizing_integration_owners": {}, "context": 0 if guild else 1,
                "attachment_size_limit": 8_388_608,
                "data": {"id": str(self.next_id()), "name": name, "type": 1,
                         "options": [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()]}}
        if guild:
            data.update(guild_id=str(GUILD_ID), channel_id=str(CHANNEL_ID),
                        channel={"id": str(CHANNEL_ID), "type": 0, "guild_id": str(GUILD_ID), "name": "general"},
                        member={"user": _user(user_id, "ana"), "roles": [], "joined_at": _now(), "deaf": False,
                                "mute": False, "flags": 0, "permissions": "0"}, guild_locale="en-US")
        else:
            dm = 50_000 + user_id
            data.update(channel_id=str(dm), channel={"id": str(dm), "type": 1}, user=_user(user_id, "ana"))
        await self.dispatch("INTERACTION_CREATE", data)
        return data

    async def wait_sent(self, count: int, timeout: float = 60.0) -> list[dict]:
        """Wait until at least ``count`` messages were sent by the bot."""
        return await wait_for_items(self.sent, count, timeout)

    # --- server side -----------------------------------------------------------------------------
    async def start(self) -> "FakeDiscord":
        app = web.Application()
        app.router.add_get("/", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner:
            await self._runner.cleanup()

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 30_000}}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            payload = json.loads(msg.data)
            if payload["op"] == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif payload["op"] == 2:
                if payload["d"]["token"] != self.token:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                if self.refuse_privileged_intents and payload["d"]["intents"] & MESSAGE_CONTENT_INTENT:
                    await ws.close(code=4014, message=b"Disallowed intent(s).")  # not enabled in the portal
                    break
                self._ws = ws
                ready = {"v": 10, "user": BOT_USER, "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
                         "session_id": "fake-session", "resume_gateway_url": self.gateway_url,
                         "application": {"id": str(APP_ID), "flags": 0}}
                await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": next(self._seq), "d": ready}))
                await ws.send_str(json.dumps({"op": 0, "t": "GUILD_CREATE", "s": next(self._seq), "d": self._guild()}))
                self.ready.set()
        return ws

    def _guild(self) -> dict:
        everyone = {"id": str(GUILD_ID), "name": "@everyone", "permissions": "68608", "position": 0, "color": 0,
                    "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        channel = {"id": str(CHANNEL_ID), "type": 0, "guild_id": str(GUILD_ID), "name": "general", "position": 0,
                   "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
                   "rate_limit_per_user": 0, "last_message_id": None}
        me = {"user": BOT_USER, "roles": [], "joined_at": _now(), "deaf": False, "mute": False, "flags": 0}
        return {"id": str(GUILD_ID), "name": "test guild", "icon": None, "splash": None, "discovery_splash": None,
                "owner_id": "1", "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
                "default_message_notifications": 0, "explicit_content_filter": 0, "roles": [everyone],
                "emojis": [], "stickers": [], "features": [], "mfa_level": 0, "application_id": None,
                "system_channel_id": None, "system_channel_flags": 0, "rules_channel_id": None,
                "joined_at": _now(), "large": False, "unavailable": False, "member_count": 3,
                "voice_states": [], "members": [me], "channels": [channel], "threads": [], "presences": [],
                "max_members": 100, "vanity_url_code": None, "description": None, "banner": None,
                "premium_tier": 0, "preferred_locale": "en-US", "public_updates_channel_id": None,
                "nsfw_level": 0, "premium_progress_bar_enabled": False}

    def _message(self, channel_id: str, body: dict) -> dict:
        return {"id": str(self.next_id()), "channel_id": channel_id, "author": BOT_USER,
                "content": body.get("content", ""), "timestamp": _now(), "edited_timestamp": None, "tts": False,
                "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
                "pinned": False, "type": 0, "flags": int(body.get("flags") or 0)}

    async def _rest(self, request: web.Request) -> web.Response:
        path, method = request.match_info["path"], request.method
        self.calls.append(f"{method} /{path}")
        for (m, prefix), failures in self.fail_next.items():
            if failures and m == method and path.startswith(prefix):
                status = failures.pop(0)
                body = {"message": "You are being rate limited.", "retry_after": 0.5, "global": False} \
                    if status == 429 else {"message": "Internal Server Error", "code": 0}
                return _json(body, status)
        if request.headers.get("Authorization") != f"Bot {self.token}" and not path.startswith(("webhooks/", "interactions/")):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        body = await request.json() if request.can_read_body else {}
        parts = path.split("/")
        if path == "users/@me":
            return _json(BOT_USER)
        if path == "oauth2/applications/@me":
            return _json({"id": str(APP_ID), "name": "rapport", "description": "", "icon": None, "bot_public": True,
                          "bot_require_code_grant": False, "owner": _user(1, "owner"), "verify_key": "00",
                          "flags": 0, "summary": "", "team": None})
        if parts[0] == "applications" and parts[-1] == "commands" and method == "PUT":
            self.commands = [dict(c, id=str(self.next_id()), application_id=str(APP_ID), version="1") for c in body]
            return _json(self.commands)
        if parts[0] == "channels" and parts[-1] == "typing":
            self.typing.append(parts[1])
            return web.Response(status=204)
        if parts[0] == "channels" and parts[-1] == "messages" and method == "POST":
            msg = self._message(parts[1], body)
            self.sent.append({"kind": "channel", "channel_id": int(parts[1]), "body": body, "message": msg})
            return _json(msg)
        if parts[0] == "interactions" and parts[-1] == "callback":
            self.callbacks.append({"interaction_id": parts[1], "at": time.monotonic(), **body})
            if request.query.get("with_response", "").lower() not in ("true", "1"):
                return web.Response(status=204)
            ephemeral = bool(int((body.get("data") or {}).get("flags") or 0) & 64)
            return _json({"interaction": {"id": parts[1], "type": 2, "response_message_loading": body["type"] == 5,
                                          "response_message_ephemeral": ephemeral},
                          "resource": {"type": body["type"]}})
        if parts[0] == "webhooks" and method == "POST":
            msg = self._message(str(CHANNEL_ID), body)
            self.sent.append({"kind": "followup", "token": parts[2], "body": body, "message": msg})
            return _json(msg)
        return _json({"message": "404: Not Found", "code": 0}, 404)
