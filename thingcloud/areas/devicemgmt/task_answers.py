"""Devices' answers to tasks, written a batch per transaction (``AnswerWriter``, one per node).

A task for 10,000 devices brings 10,000 answers within seconds. One transaction each would hold (or
wait for) a pooled connection each: on PostgreSQL the pool ran dry and answers failed with timeouts.
Here every answer waits in one queue; a single writer takes up to ``BATCH`` of them, moves the
device tasks in one transaction (one UPDATE per task and outcome), checks completion after the
commit, stores the values read or written as device properties, and only then resolves each
answer's future — so an MQTT PUBACK or a WebSocket ack still means "recorded".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select

from thingcloud import tables as t
from thingcloud.areas.devicemgmt import properties as dm_properties
from thingcloud.areas.devicemgmt.task_lifecycle import finish_if_done, move
from thingcloud.errors import NotFound
from thingcloud.runtime import Runtime

BATCH = 500
DEVICE_PREFIX = "deviceProperties."

_task = t.dm_tasks


@dataclass
class Answer:
    did: str
    tid: str
    status: str  # SUCCEEDED | FAILED | CANCELLED
    error: tuple[str, str] | None
    value: Any
    done: asyncio.Future[None] = field(repr=False)


def _nested(path: str, value: Any) -> dict[str, Any]:
    """``device.timezone`` + value → ``{"device": {"timezone": value}}``."""
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return dict(out)


class AnswerWriter:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.loop = asyncio.get_running_loop()
        self.queue: list[Answer] = []
        self.wake = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None

    async def submit(
        self, did: str, tid: str, status: str, error: tuple[str, str] | None, value: Any
    ) -> None:
        """Record one answer; returns once it is committed, raises NotFound for a task the device
        does not have (any more)."""
        answer = Answer(did, tid, status, error, value, self.loop.create_future())
        self.queue.append(answer)
        self.wake.set()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._run(), name="devicemgmt:answers")
        await answer.done

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                batch, self.queue = self.queue[:BATCH], self.queue[BATCH:]
                try:
                    await self._write(batch)
                except Exception as exc:  # the database is away: every answer of the batch fails
                    for answer in batch:
                        if not answer.done.done():
                            answer.done.set_exception(exc)

    async def _write(self, batch: list[Answer]) -> None:
        rt, now = self.rt, self.rt.clock.now_ms()
        groups: dict[tuple[str, str, Any, bytes], list[Answer]] = {}
        for answer in batch:
            kept = answer.value if answer.status == "SUCCEEDED" else None
            groups.setdefault((answer.tid, answer.status, answer.error, orjson.dumps(kept)), []).append(
                answer
            )
        recorded: list[tuple[Answer, dict[str, Any]]] = []
        refused: dict[int, NotFound] = {}
        async with rt.db.write() as conn:
            tids = list({a.tid for a in batch})
            found = await conn.execute(
                select(_task.c.id, _task.c.task_type, _task.c.property, _task.c.parameters).where(
                    _task.c.id.in_(tids)
                )
            )
            tasks = {r["id"]: dict(r) for r in found.mappings()}
            for (tid, status, error, _), answers in groups.items():
                if tid not in tasks:
                    for a in answers:
                        refused[id(a)] = NotFound(f"Task {tid} not found for device {a.did}")
                    continue
                frm = (
                    ("CANCEL_REQUESTED",)
                    if status == "CANCELLED"
                    else ("PROCESSING", "CANCEL_REQUESTED", "QUEUED")
                )
                value = answers[0].value if status == "SUCCEEDED" else None
                moved = set(
                    await move(
                        conn, tid, [a.did for a in answers], frm, status, now, error=error, result=value
                    )
                )
                for a in answers:
                    if a.did in moved:
                        recorded.append((a, tasks[tid]))
                    else:
                        refused[id(a)] = NotFound(f"Task {tid} is not running on device {a.did}")
        await finish_if_done(rt, list({a.tid for a, _ in recorded}))
        for answer, task in recorded:
            await self._properties(answer, task, now)
        for answer in batch:
            if not answer.done.done():
                problem = refused.get(id(answer))
                if problem is None:
                    answer.done.set_result(None)
                else:
                    answer.done.set_exception(problem)

    async def _properties(self, answer: Answer, task: dict[str, Any], now: int) -> None:
        """A read's value, or a write's value, become the device's device properties."""
        if answer.status != "SUCCEEDED" or not task["property"].startswith(DEVICE_PREFIX):
            return
        path = task["property"].removeprefix(DEVICE_PREFIX)
        if task["task_type"] == "R" and answer.value is not None:
            await dm_properties.record_device_properties(
                self.rt, answer.did, _nested(path, answer.value), now
            )
        elif task["task_type"] == "W":
            written = (task["parameters"] or {}).get("value")
            await dm_properties.record_device_properties(self.rt, answer.did, _nested(path, written), now)


_writers: dict[int, AnswerWriter] = {}


def answer_writer(rt: Runtime) -> AnswerWriter:
    """This node's writer (one per runtime and event loop)."""
    writer = _writers.get(id(rt))
    if writer is None or writer.rt is not rt or writer.loop is not asyncio.get_running_loop():
        writer = _writers[id(rt)] = AnswerWriter(rt)
    return writer
