"""Where events go besides the journal: the coordination backend's pub/sub, and NATS.

Every event is journaled first; sinks hear of a batch only once it is durable,
in journal order, each as one JSON object with its journal sequence number:

    {"seq": 812, "run_id": "...", "ts": 1763885400.25, "type": "task.finished",
     "task_id": "backend", "state": "succeeded", ...}

- Redis (`--state redis://...`): PUBLISH on the channel `events.subject`
  (default `abreast.events`), pipelined, from a thread of its own so the run's
  loop never waits on the network.
- NATS (`events: {nats: nats://host:4222}`): published on the same subject by
  an asyncio task; the connection is made when the run starts and a run whose
  NATS cannot be reached does not start (the user asked for it).
- With the SQLite backend the journal's `events` table is the stream: a
  subscriber tails it by `seq` (`abreast dashboard` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from typing import Any

from abreast.coord.journal import EventRow
from abreast.coord.location import redact_url
from abreast.errors import StateError

PUBLISH_WINDOW_S = 0.05


def event_json(e: EventRow) -> str:
    return json.dumps(
        {
            "seq": e.seq,
            "run_id": e.run_id,
            "ts": e.ts,
            "type": e.type,
            "task_id": e.task_id,
            **e.data,
        },
        default=str,
    )


class Sink:
    """An event sink; `start` before the run, `close` after (it drains what is left)."""

    async def start(self) -> None: ...

    def __call__(self, events: list[EventRow]) -> None: ...

    async def close(self) -> None: ...


class RedisSink(Sink):
    def __init__(self, url: str, channel: str) -> None:
        from abreast.coord.backend import BEST_EFFORT_WAIT_S
        from abreast.coord.redis_coord import RedisCoordinator

        self.channel = channel
        # Events are journaled first: one not published while Redis is gone is counted
        # and dropped, and never holds the run (nor its end) for the whole wait.
        self._coord = RedisCoordinator(url, calls_wait_s=BEST_EFFORT_WAIT_S)
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="abreast-events-redis", daemon=True)
        self.errors = 0

    async def start(self) -> None:
        self._thread.start()

    def __call__(self, events: list[EventRow]) -> None:
        self._queue.put([event_json(e) for e in events])

    def _work(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            # Coalesce what comes within a short window: one pipeline, one round trip.
            # A round trip per journal commit would cost the run (and Redis) CPU on every
            # task end; subscribers get events at most PUBLISH_WINDOW_S later.
            deadline = time.monotonic() + PUBLISH_WINDOW_S
            while (left := deadline - time.monotonic()) > 0:
                try:
                    more = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    self._publish(batch)
                    return
                batch += more
            self._publish(batch)

    def _publish(self, batch: list[str]) -> None:
        try:
            self._coord.publish_many(self.channel, batch)
        except Exception:
            self.errors += 1

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, 30)
        self._coord.close()


class NatsSink(Sink):
    def __init__(self, url: str, subject: str) -> None:
        self.url = url
        self.subject = subject
        self._queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None

    async def _error(self, _e: Exception) -> None:
        """NATS gone or refusing: not said (nats-py's own would print a traceback for each
        try to reconnect, over the run's output). Events are journaled first."""

    async def start(self) -> None:
        try:
            import nats
        except ImportError:
            raise StateError("events.nats needs nats-py: pip install 'abreast[nats]'") from None
        try:
            self._nc = await nats.connect(
                self.url,
                connect_timeout=5,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=self._error,
            )
        except Exception as e:
            raise StateError(
                f"cannot reach NATS at {redact_url(self.url)}: {e}",
                hint="start nats-server, or remove `events.nats` from the workflow",
            ) from e
        self._task = asyncio.create_task(self._work())

    def __call__(self, events: list[EventRow]) -> None:
        self._queue.put_nowait([event_json(e).encode() for e in events])

    async def _work(self) -> None:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            for payload in batch:
                # Buffered while NATS reconnects; refused (and dropped) once the buffer is full.
                with contextlib.suppress(Exception):
                    await self._nc.publish(self.subject, payload)

    async def close(self) -> None:
        """Send what is buffered (NATS there) and close; a NATS gone holds nothing up and
        fails nothing: the run's end is the same with it or without."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        if self._nc.is_connected:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=10)
        with contextlib.suppress(Exception):
            await self._nc.close()
