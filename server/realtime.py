"""Socket.IO: the server, its namespaces, and domain events mapped to rooms.

With ``[redis] url`` set, python-socketio's Redis manager carries every emit
to the clients of every process sharing that Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import socketio
from aiohttp import web

from qa.events import OnAirChanged, QuestionChanged, QuestionRemoved, QuestionSubmitted
from qa.model import Question, staff_view, viewer_view
from qa.service import VotesChanged
from schedule.events import ProgrammeChanged
from server import keys
from server.auth import SESSION_COOKIE, Role
from server.events import EventBus
from server.http import VIEWER_COOKIE
from server.metrics import Metrics
from server.settings import Settings
from server.staffsockets import StaffSockets
from tv.namespace import CONTRIBUTE, ContributeNamespace, VideoPushes

log = logging.getLogger("tv.realtime")

PUBLIC = "/"
MODERATION = "/moderation"
CONTROL = "/control"
# Vote counts can move hundreds of times a second on a popular question;
# viewers get the latest count at most this often.
VOTE_FLUSH_S = 0.25


def viewer_room(viewer_id: str) -> str:
    return f"viewer:{viewer_id}"


class _RedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager, keeping a lone ``null`` argument a ``null``.

    Every emit goes through ``_handle_emit``, in the emitting process as in
    the others; it unwraps a one-argument list, then reads the ``None`` it got
    as "no argument at all". ``on_air`` cleared (``null``) would reach every
    client as an event without its argument. A 1-tuple stays one argument.
    """

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("data") == [None] and not message.get("binary"):
            message = {**message, "data": [(None,)]}
        await super()._handle_emit(message)


class _TolerantPacket(socketio.packet.Packet):  # type: ignore[misc]
    """A client packet that cannot be read is dropped with one warning, not a traceback.

    python-socketio raises from its decoder on a malformed frame (``42[``, an
    ack id of 5,000 digits, a payload nested thousands deep); Engine.IO then
    logs the error with its traceback for every such frame. Read as a
    DISCONNECT, the frame ends that one client's session on ``/`` and
    nothing else. ``serializer`` is python-socketio's public hook for this.
    """

    def decode(self, encoded_packet: Any) -> int:
        try:
            return int(super().decode(encoded_packet) or 0)
        except (ValueError, TypeError, IndexError, RecursionError) as e:
            log.warning("a Socket.IO client sent a packet that cannot be read: ignored",
                        extra={"reason": str(e)[:120]})
            self.packet_type, self.namespace = socketio.packet.DISCONNECT, "/"
            self.data, self.id = None, None
            return 0


def create_sio(settings: Settings) -> socketio.AsyncServer:
    manager = None
    if settings.redis_url:
        manager = _RedisManager(settings.redis_url, channel=f"{settings.redis_channel}:socketio")
    return socketio.AsyncServer(async_mode="aiohttp", client_manager=manager,
                                ping_interval=20, ping_timeout=20,
                                max_http_buffer_size=64 * 1024, serializer=_TolerantPacket)


class _Namespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(self, namespace: str, app: web.Application) -> None:
        super().__init__(namespace)
        self.app = app

    @property
    def metrics(self) -> Metrics:
        return self.app[keys.METRICS]

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.metrics.sockets.labels(self.namespace).dec()


class PublicNamespace(_Namespace):
    """Anyone: programme, public questions, on-air, and one's own questions."""

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        request: web.Request = environ["aiohttp.request"]
        viewer = request.cookies.get(VIEWER_COOKIE)
        if viewer:
            await self.enter_room(sid, viewer_room(viewer))
        self.metrics.sockets.labels(self.namespace).inc()
        on_air = await self.app[keys.QUESTIONS].on_air()
        await self.emit("on_air", (viewer_view(on_air) if on_air else None,), to=sid)
        await self.emit("programme", self.app[keys.PROGRAMME_VIEW](), to=sid)


def _refused(code: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    # Two arguments: the client gets {"message": sentence, "data": {"error", "message"}};
    # one dict alone would reach it as the dict's Python repr in "message".
    return socketio.exceptions.ConnectionRefusedError(message,
                                                      {"error": code, "message": message})


class StaffNamespace(_Namespace):
    """Staff only: the session cookie must belong to at least ``role``.

    The socket lives only as long as that session and role (``sockets``).
    """

    role = Role.MODERATOR

    def __init__(self, namespace: str, app: web.Application, sockets: StaffSockets) -> None:
        super().__init__(namespace, app)
        self.sockets = sockets

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        request: web.Request = environ["aiohttp.request"]
        session = await self.app[keys.AUTH].session_for_token(
            request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise _refused("not_authenticated", "sign in with a staff account")
        staff = session.staff
        if not staff.role.allows(self.role):
            raise _refused("forbidden", "your role may not join this namespace")
        self.sockets.add(self.namespace, sid, session, self.role)
        await self.save_session(sid, {"username": staff.username, "role": staff.role.value})
        self.metrics.sockets.labels(self.namespace).inc()
        await self.emit("programme", self.app[keys.PROGRAMME_VIEW](), to=sid)
        if self.namespace == MODERATION:
            on_air = await self.app[keys.QUESTIONS].on_air()
            await self.emit("on_air", (staff_view(on_air) if on_air else None,), to=sid)
        if self.namespace == CONTROL and keys.TV in self.app:
            # Without video here (--no-video), the video process's next push comes within 1 s.
            await self.emit("feeds", [s.view() for s in self.app[keys.TV].feed_stats()], to=sid)


    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.sockets.remove(self.namespace, sid)
        await super().on_disconnect(sid, reason)


class ControlNamespace(StaffNamespace):
    """Directors and admins: the programme and the feeds (pushed by tv.namespace)."""

    role = Role.DIRECTOR


class Broadcaster:
    """Turns domain events into Socket.IO pushes to the right namespaces and rooms."""

    def __init__(self, sio: socketio.AsyncServer,
                 programme_view: Callable[[], dict[str, Any]]) -> None:
        self.sio = sio
        self.programme_view = programme_view
        self._votes: dict[int, Question] = {}
        self._flusher: asyncio.Task[None] | None = None

    def subscribe(self, bus: EventBus) -> None:
        bus.subscribe(QuestionSubmitted, self.on_submitted)
        bus.subscribe(QuestionChanged, self.on_changed)
        bus.subscribe(QuestionRemoved, self.on_removed)
        bus.subscribe(OnAirChanged, self.on_air)
        bus.subscribe(VotesChanged, self.on_votes)
        bus.subscribe(ProgrammeChanged, self.on_programme)

    async def on_programme(self, event: ProgrammeChanged) -> None:
        if not event.local:
            return  # the process that made the change tells everyone (Redis)
        body = self.programme_view()
        for namespace in (PUBLIC, MODERATION, CONTROL, CONTRIBUTE):
            await self.sio.emit("programme", body, namespace=namespace)

    async def on_submitted(self, event: QuestionSubmitted) -> None:
        q = event.question
        await self.sio.emit("question", staff_view(q), namespace=MODERATION)
        await self.sio.emit("my_question", viewer_view(q), namespace=PUBLIC,
                            room=viewer_room(q.viewer_id))

    async def on_changed(self, event: QuestionChanged) -> None:
        q = event.question
        await self.sio.emit("question", staff_view(q), namespace=MODERATION)
        if q.is_public:
            await self.sio.emit("question", viewer_view(q), namespace=PUBLIC)
        elif event.was_public:
            await self.sio.emit("question_removed", {"id": q.id}, namespace=PUBLIC)
        if event.status_changed:
            await self.sio.emit("my_question", viewer_view(q), namespace=PUBLIC,
                                room=viewer_room(q.viewer_id))

    async def on_removed(self, event: QuestionRemoved) -> None:
        q = event.question
        await self.sio.emit("question_removed", {"id": q.id}, namespace=MODERATION)
        if event.was_public:
            await self.sio.emit("question_removed", {"id": q.id}, namespace=PUBLIC)
        await self.sio.emit("my_question", viewer_view(q), namespace=PUBLIC,
                            room=viewer_room(q.viewer_id))

    async def on_air(self, event: OnAirChanged) -> None:
        q = event.question
        # A 1-tuple: python-socketio sends a bare None as "no argument at all",
        # and clients expect null (through Redis, _RedisManager keeps it so).
        await self.sio.emit("on_air", (staff_view(q) if q else None,), namespace=MODERATION)
        await self.sio.emit("on_air", (viewer_view(q) if q else None,), namespace=PUBLIC)

    async def on_votes(self, event: VotesChanged) -> None:
        self._votes[event.question.id] = event.question

    async def _flush_votes(self) -> None:
        while True:
            await asyncio.sleep(VOTE_FLUSH_S)
            pending, self._votes = self._votes, {}
            for q in pending.values():
                try:
                    await self.sio.emit("question", viewer_view(q), namespace=PUBLIC)
                    await self.sio.emit("question", staff_view(q), namespace=MODERATION)
                except Exception:
                    log.exception("pushing vote counts failed", extra={"question_id": q.id})

    async def run(self) -> AsyncIterator[None]:
        self._flusher = asyncio.create_task(self._flush_votes(), name="vote-flusher")
        yield
        self._flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flusher


def register_namespaces(sio: socketio.AsyncServer, app: web.Application,
                        video: VideoPushes, staff_sockets: StaffSockets) -> None:
    sio.register_namespace(PublicNamespace(PUBLIC, app))
    sio.register_namespace(StaffNamespace(MODERATION, app, staff_sockets))
    sio.register_namespace(ControlNamespace(CONTROL, app, staff_sockets))
    sio.register_namespace(ContributeNamespace(app, video))
