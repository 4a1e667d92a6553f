"""An in-process bus for domain events: services publish, the wiring subscribes.

Handlers are awaited in subscription order, so that the order in which one
process publishes is the order in which its clients are told.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("tv.events")

Handler = Callable[[Any], Awaitable[None]]


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[type, list[Handler]] = {}

    def subscribe(self, event_type: type, handler: Handler) -> None:
        self._handlers.setdefault(event_type, []).append(handler)

    async def publish(self, event: object) -> None:
        for handler in self._handlers.get(type(event), ()):
            try:
                await handler(event)
            except Exception:
                # One failing subscriber (a broken socket, Redis away) must not
                # undo a change that is already stored.
                log.exception("an event subscriber failed",
                              extra={"event": type(event).__name__})
