"""Each WHIP and WHEP session's connection, followed from the answer to its end.

A session is attached once its connection is up and ended once it is
closed. One that never comes up is closed after ``[webrtc]
connect_timeout_s``: an offer without usable candidates would otherwise
hold its place for ever, as aioice keeps waiting for more candidates
(trickle ICE allows them). One that fails (aioice's ICE consent freshness
expired: the peer vanished; or DTLS failed) is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection

log = logging.getLogger("tv.service")


class Lifetimes:
    """The connections followed, and when each not yet connected is given up."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._live: set[str] = set()
        """Sessions followed that the server has not ended itself."""
        self._closing: set[asyncio.Task[None]] = set()

    def follow(self, pc: RTCPeerConnection, session_id: str, context: dict[str, Any],
               ended: Callable[[], Awaitable[None]],
               connected: Callable[[], None] | None = None) -> None:
        """Call ``connected`` once ``pc`` is up, ``ended`` once it is closed.

        ``context``: what the log lines say about the session (feed, channel...).
        """
        timeout = self.connect_timeout_s
        self._live.add(session_id)
        self._deadlines[session_id] = asyncio.get_running_loop().call_later(
            timeout, self._never_connected, pc, session_id, {**context, "timeout_s": timeout})

        @pc.on("connectionstatechange")
        async def changed() -> None:
            state = pc.connectionState
            if state == "connected":
                self._cancel_deadline(session_id)
                if connected is not None:
                    connected()
            elif state == "failed":
                log.warning("a peer stopped answering: closing its session", extra=context)
                await pc.close()
            elif state == "closed":
                if session_id in self._live:  # not a DELETE, a shutdown or a deadline
                    log.info("a peer's connection closed without a DELETE (the peer left, or "
                             "stopped answering ICE consent checks): ending its session",
                             extra=context)
                self.forget(session_id)
                try:
                    await ended()
                except Exception:
                    log.exception("cleaning up after a closed connection failed")

    def forget(self, session_id: str) -> None:
        """The session is being ended: follow it no more (call before closing it)."""
        self._live.discard(session_id)
        self._cancel_deadline(session_id)

    def _cancel_deadline(self, session_id: str) -> None:
        deadline = self._deadlines.pop(session_id, None)
        if deadline is not None:
            deadline.cancel()

    async def stop(self) -> None:
        """Cancel every deadline and wait for the connections being closed."""
        for deadline in self._deadlines.values():
            deadline.cancel()
        self._deadlines.clear()
        self._live.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _never_connected(self, pc: RTCPeerConnection, session_id: str,
                         context: dict[str, Any]) -> None:
        self._deadlines.pop(session_id, None)
        if pc.connectionState in ("connected", "closed"):
            return
        self._live.discard(session_id)
        log.warning("a peer never connected: closing its session, its place is free again",
                    extra=context)
        task = asyncio.create_task(pc.close(), name="close-unconnected-peer")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
