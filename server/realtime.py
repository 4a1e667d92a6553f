"""Socket.IO: the server, its namespaces, and domain events mapped to rooms.

With ``[redis] url`` set, python-socketio's Redis manager carries every emit
to the clients of every process sharing that Redis; when Redis is lost and
back, every process sends ``resync`` to its own clients, who refetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import engineio
import socketio
from aiohttp import web
from engineio import packet as eio_packet
from redis.asyncio import Redis

from qa.errors import StorageUnavailable
from qa.events import OnAirChanged, QuestionChanged, QuestionRemoved, QuestionSubmitted
from qa.model import Question, staff_view, viewer_view
from qa.service import VotesChanged
from schedule.events import ProgrammeChanged
from server import keys, redisconn
from server.admission import Overloaded
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
# Vote counts can move hundreds of times a second on a popular question:
# moderators get the latest count at most this often, and viewers (a push to
# every one of them per question) at most once every VOTE_FLUSH_PUBLIC_S.
VOTE_FLUSH_S = 0.25
VOTE_FLUSH_PUBLIC_S = 1.0
# Rooms of `/` by how a client hears vote counts: one `votes` push a second
# for every question whose count moved (clients that connect with
# auth {"votes": "batched"}, as the watch page does), or a `question` push
# per question, the contract's original form.
VOTES_BATCHED = "votes:batched"
VOTES_EACH = "votes:each"


def viewer_room(viewer_id: str) -> str:
    return f"viewer:{viewer_id}"


class _ClientQueue(asyncio.Queue[Any]):
    """Engine.IO's queue of packets for one client, bounded.

    Engine.IO keeps an unbounded queue per client, drained by a writer task
    that waits on the client's socket: a client that stops reading holds
    every later push until its ping times out. Here the queue is cut at
    ``[load] client_backlog`` packets (the client has stopped reading, or
    reads far slower than the show moves): what is queued is dropped, the
    client is told to close (it reconnects by itself) and the writer to stop;
    later pushes to it are dropped.
    """

    def __init__(self, limit: int, on_cut: Callable[[], None]) -> None:
        super().__init__()
        self.limit = limit
        self.on_cut = on_cut
        self.cut = False

    def put_nowait(self, item: Any) -> None:
        if item is not None and self.cut:
            return
        if item is not None and self.qsize() >= self.limit:
            self.cut = True
            while not self.empty():
                self.get_nowait()
                self.task_done()
            self.on_cut()
            # Engine.IO's CLOSE tells the client to go (a polling client gets
            # it at its next poll); None stops a WebSocket's writer.
            super().put_nowait(eio_packet.Packet(eio_packet.CLOSE))
            item = None
        super().put_nowait(item)


class _EngineIO(engineio.AsyncServer):  # type: ignore[misc]
    def __init__(self, *args: Any, client_backlog: int = 512, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_backlog = client_backlog
        self.clients_cut = 0

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return _ClientQueue(self.client_backlog, self._cut)

    def _cut(self) -> None:
        self.clients_cut += 1
        log.warning("a Socket.IO client stopped reading its pushes: disconnected, it will "
                    "reconnect and catch up", extra={"backlog": self.client_backlog})


class _SocketIO(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server on _EngineIO (through its engineio_options)."""

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return _EngineIO


class _FanOutManager(socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's manager, with a broadcast that costs less per client.

    python-socketio 5.18 (``async_manager.py``) sends a broadcast through one
    asyncio task per recipient and waits for them all: 1,000 viewers, 1,000
    tasks per push. Putting a packet on a client's queue never waits (see
    _ClientQueue), so here the same packet, encoded once, is queued for each
    recipient in turn, in one task. Pushes with an acknowledgement callback
    (none of ours) keep python-socketio's path.
    """

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   **kwargs: Any) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                               callback=callback, to=to, **kwargs)
            return
        room = to or room
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        pkt = self.server.packet_class(socketio.packet.EVENT, namespace=namespace,
                                       data=[event, *args])
        encoded = pkt.encode()
        frames = [eio_packet.Packet(eio_packet.MESSAGE, p)
                  for p in (encoded if isinstance(encoded, list) else [encoded])]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        # A copy: a recipient may disconnect (and leave its rooms) while we send.
        for sid, eio_sid in list(self.get_participants(namespace, room)):
            if sid in skip:
                continue
            for frame in frames:
                await self.server.eio.send_packet(eio_sid, frame)


class _RedisManager(socketio.AsyncRedisManager, _FanOutManager):  # type: ignore[misc]
    """python-socketio's Redis manager, made to live through a Redis outage.

    What python-socketio 5.18.1 does by itself (``async_pubsub_manager.py``,
    ``async_redis_manager.py``): an emit reaches this process's own clients
    directly (``_handle_emit``), then goes to Redis for the other processes
    (``_publish``: two attempts, then the message is dropped with an error
    log; a new client per attempt, the old ones never closed). Its listener
    retries after 1, 2, 4 ... 60 s, so pushes from the other processes came
    back up to a minute after Redis did, and what was published meanwhile
    was lost without anyone knowing. Here:

    - commands fail within about ``timeout_s`` (redisconn.fast_client);
    - once Redis is known down, publishes are skipped (each would fail too,
      and make the emitting request wait), and a background task asks every
      other process to resync, every ``retry_s`` until Redis takes it; then
      publishing resumes;
    - the listener retries every ``retry_s`` and, once subscribed again,
      sends ``resync`` to this process's own clients in every namespace, so
      that pages refetch what they missed, and publishing resumes;
    - going down and coming back are logged once each, in words.

    It also keeps a lone ``null`` argument a ``null``: ``_handle_emit``
    unwraps a one-argument list and reads the ``None`` it got as "no argument
    at all"; ``on_air`` cleared would reach clients without its argument.
    """

    def __init__(self, url: str, channel: str, timeout_s: float, retry_s: float) -> None:
        super().__init__(url, channel=channel)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.on_resync: Callable[[], Awaitable[None]] | None = None
        """Called after ``resync`` went out locally (the programme is pushed again)."""
        self._publisher: Redis | None = None
        self._down_since: float | None = None
        self._repair: asyncio.Task[None] | None = None
        self._resubscribed = asyncio.Event()

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("event") == _RESYNC_REQUEST:
            await self.resync_locally("another process lost pushes")
            return
        if message.get("data") == [None] and not message.get("binary"):
            message = {**message, "data": [(None,)]}
        await super()._handle_emit(message)

    async def _publish(self, data: dict[str, Any]) -> None:
        if self._down_since is not None:
            self._lost_a_publish(None)  # no emitting request waits on a Redis known down
        else:
            await self._send(data)

    async def _send(self, data: dict[str, Any]) -> bool:
        if self._publisher is None:
            self._publisher = redisconn.fast_client(self.redis_url, self.timeout_s)
        try:
            async with asyncio.timeout(redisconn.deadline(self.timeout_s)):
                await self._publisher.publish(self.channel, self.json.dumps(data))
        except redisconn.UNREACHABLE as e:
            self._lost_a_publish(e)
            return False
        return True

    def _lost_a_publish(self, error: BaseException | None) -> None:
        if error is not None:
            self._went_down(error)
        if self._repair is None or self._repair.done():
            self._repair = asyncio.create_task(self._ask_others_to_resync(),
                                               name="socketio-resync-request")

    async def _ask_others_to_resync(self) -> None:
        """Until Redis takes it: every other process resyncs its clients."""
        request = {"method": "emit", "event": _RESYNC_REQUEST, "data": [None],
                   "namespace": PUBLIC, "room": None, "skip_sid": None, "callback": None,
                   "binary": False, "host_id": self.host_id}
        while True:
            # Woken early when the listener is subscribed again: Redis is back.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_s):
                    await self._resubscribed.wait()
            self._resubscribed.clear()
            if await self._send(request):
                self._came_back()
                return

    async def _redis_listen_with_retries(self) -> AsyncIterator[dict[str, Any]]:
        lost = False
        while True:
            # No retry inside redis-py: a reconnection it made quietly would
            # hide that messages were lost meanwhile.
            client = redisconn.fast_client(self.redis_url, self.timeout_s, retries=0)
            self.pubsub = pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if lost:
                    lost = False
                    self._came_back()  # publishing resumes at once
                    self._resubscribed.set()
                    await self.resync_locally("pushes between processes resumed")
                async for message in pubsub.listen():
                    yield message
            except redisconn.UNREACHABLE as e:
                lost = True
                self._went_down(e)
            finally:
                with contextlib.suppress(*redisconn.UNREACHABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            await asyncio.sleep(self.retry_s)

    async def resync_locally(self, reason: str) -> None:
        """Tell this process's clients (only) to refetch what they show."""
        for namespace in (PUBLIC, MODERATION, CONTROL, CONTRIBUTE):
            await self.emit("resync", {"reason": reason}, namespace=namespace,
                            ignore_queue=True)
        if self.on_resync is not None:
            try:
                await self.on_resync()
            except Exception:  # the resync itself went out; keep listening
                log.exception("pushing the programme again after a resync failed")

    async def aclose(self) -> None:
        """Stop listening and close the clients (python-socketio leaves them open)."""
        for task in (getattr(self, "thread", None), self._repair):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._publisher is not None:
            await self._publisher.aclose()

    def _went_down(self, error: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("Redis cannot be reached: pushes from other processes are held, "
                        "clients will be told to catch up once it is back",
                        extra={"error": str(error) or type(error).__name__,
                               "retry_s": self.retry_s})

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.info("Redis is back: pushes reach the clients of every process again",
                     extra={"down_s": round(time.monotonic() - self._down_since, 1)})
            self._down_since = None


# Carried through Redis like an emit, but handled by each receiving process
# (a resync of its own clients) instead of being forwarded as an event.
_RESYNC_REQUEST = "tv:resync-request"


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
    manager: socketio.AsyncManager = _FanOutManager()
    if settings.redis_url:
        manager = _RedisManager(settings.redis_url, f"{settings.redis_channel}:socketio",
                                settings.redis_timeout_s, settings.redis_retry_s)
    # A client has 40 s to answer a ping: under a crowd's load, the ping
    # waits behind the pushes queued before it (browsers wait for one 60 s,
    # python-socketio's client 45 s).
    return _SocketIO(async_mode="aiohttp", client_manager=manager,
                     ping_interval=20, ping_timeout=40,
                     max_http_buffer_size=64 * 1024, serializer=_TolerantPacket,
                     client_backlog=settings.load.client_backlog)


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

    def __init__(self, namespace: str, app: web.Application) -> None:
        super().__init__(namespace, app)
        self._later: set[asyncio.Task[None]] = set()

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        request: web.Request = environ["aiohttp.request"]
        viewer = request.cookies.get(VIEWER_COOKIE)
        if viewer:
            await self.enter_room(sid, viewer_room(viewer))
        batched = isinstance(auth, dict) and auth.get("votes") == "batched"
        await self.enter_room(sid, VOTES_BATCHED if batched else VOTES_EACH)
        self.metrics.sockets.labels(self.namespace).inc()
        await self.emit("programme", self.app[keys.PROGRAMME_VIEW](), to=sid)
        if not await self._send_on_air(sid):
            # Connected all the same: under load the on-air question comes a little later.
            task = asyncio.create_task(self._send_on_air_later(sid), name="on-air-later")
            self._later.add(task)
            task.add_done_callback(self._later.discard)

    async def _send_on_air(self, sid: str) -> bool:
        try:
            on_air = await self.app[keys.QUESTIONS].on_air()
        except (Overloaded, StorageUnavailable):
            return False
        await self.emit("on_air", (viewer_view(on_air) if on_air else None,), to=sid)
        return True

    async def _send_on_air_later(self, sid: str) -> None:
        for attempt in range(5):
            await asyncio.sleep(random.uniform(1.0, 2.0) * 2**attempt)
            if not self.server.manager.is_connected(sid, self.namespace) \
                    or await self._send_on_air(sid):
                return


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
            on_air = await self.app[keys.QUESTIONS].on_air(staff=True)
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
        self._public_votes: dict[int, Question] = {}
        self._flusher: asyncio.Task[None] | None = None
        if isinstance(sio.manager, _RedisManager):
            # Control rooms and contributor pages follow the programme from
            # pushes only: after a resync they get it as it is now.
            sio.manager.on_resync = self.push_programme_locally

    async def push_programme_locally(self) -> None:
        body = self.programme_view()
        for namespace in (PUBLIC, MODERATION, CONTROL, CONTRIBUTE):
            await self.sio.emit("programme", body, namespace=namespace, ignore_queue=True)

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
        self._public_votes[event.question.id] = event.question

    async def _flush_votes(self) -> None:
        loop = asyncio.get_running_loop()
        public_due = loop.time() + VOTE_FLUSH_PUBLIC_S
        while True:
            await asyncio.sleep(VOTE_FLUSH_S)
            staff, self._votes = self._votes, {}
            public: dict[int, Question] = {}
            if loop.time() >= public_due:
                public, self._public_votes = self._public_votes, {}
                public_due = loop.time() + VOTE_FLUSH_PUBLIC_S
            try:
                for q in staff.values():
                    await self.sio.emit("question", staff_view(q), namespace=MODERATION)
                if public:
                    counts = [{"id": q.id, "votes": q.votes} for q in public.values()]
                    await self.sio.emit("votes", {"questions": counts}, namespace=PUBLIC,
                                        room=VOTES_BATCHED)
                for q in public.values():
                    await self.sio.emit("question", viewer_view(q), namespace=PUBLIC,
                                        room=VOTES_EACH)
            except Exception:
                log.exception("pushing vote counts failed")

    async def run(self) -> AsyncIterator[None]:
        self._flusher = asyncio.create_task(self._flush_votes(), name="vote-flusher")
        yield
        self._flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flusher
        if isinstance(self.sio.manager, _RedisManager):
            await self.sio.manager.aclose()


def register_namespaces(sio: socketio.AsyncServer, app: web.Application,
                        video: VideoPushes, staff_sockets: StaffSockets) -> None:
    sio.register_namespace(PublicNamespace(PUBLIC, app))
    sio.register_namespace(StaffNamespace(MODERATION, app, staff_sockets))
    sio.register_namespace(ControlNamespace(CONTROL, app, staff_sockets))
    sio.register_namespace(ContributeNamespace(app, video))
