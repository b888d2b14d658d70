"""Live updates for open console pages: `feedback.events` read once per process, fanned out
to each page's server-sent-event stream, only the cases its viewer may see.

The feed reads from the end of the topic without a consumer group (it keeps no position: a
page that reconnects reloads its list anyway). It starts when the first page listens and
then keeps reading, so moving from page to page opens no blind window while it rejoins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from contracts.topics import FEEDBACK_EVENTS
from services.access.roles import Actor, sees_department
from services.common.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseChanged:
    number: str
    department: str | None
    event: str

    def sse(self) -> str:
        data = json.dumps({"number": self.number, "department": self.department})
        return f"event: case\ndata: {data}\n\n"


class LiveFeed:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._listeners: dict[int, tuple[Actor, asyncio.Queue[CaseChanged]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._next_id = 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.asynccontextmanager
    async def listen(self, actor: Actor) -> AsyncIterator[asyncio.Queue[CaseChanged]]:
        queue: asyncio.Queue[CaseChanged] = asyncio.Queue(maxsize=200)
        self._next_id += 1
        key = self._next_id
        self._listeners[key] = (actor, queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._read_forever(), name="console-live-feed")
        try:
            yield queue
        finally:
            del self._listeners[key]

    def publish(self, change: CaseChanged) -> None:
        # Many events name no department (only routing decisions do): those tell every page
        # that something changed, without saying which case, so lists stay fresh and scoped.
        anonymous = CaseChanged("", None, change.event)
        for actor, queue in list(self._listeners.values()):
            if queue.full():
                continue
            visible = change.department is not None and sees_department(actor, change.department)
            queue.put_nowait(change if visible else anonymous)

    async def _read_forever(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                self.settings.topic(FEEDBACK_EVENTS),
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                auto_offset_reset="latest",
                enable_auto_commit=False,
                client_id="feedback-console-live",
            )
            try:
                await consumer.start()
                while True:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                    for records in batches.values():
                        for record in records:
                            change = _change_of(record.value)
                            if change is not None:
                                self.publish(change)
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus is down: pages keep working, live updates pause
                log.warning("console live feed interrupted; retrying", exc_info=True)
                await asyncio.sleep(2)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()


def _change_of(value: bytes | None) -> CaseChanged | None:
    try:
        body = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("feedback_number"), str):
        return None
    department = body.get("department")
    return CaseChanged(
        body["feedback_number"],
        department if isinstance(department, str) else None,
        str(body.get("event_type") or body.get("type") or ""),
    )
