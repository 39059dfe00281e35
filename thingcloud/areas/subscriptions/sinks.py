"""Where ``awsKinesis`` subscriptions deliver: a pluggable sink (REFERENCE.md §5.6).

ThingCloud ships no AWS client. An operator who wants Kinesis delivery names a factory in
``THINGCLOUD_KINESIS_SINK`` (``package.module:factory``); ``factory(rt)`` returns an object with
``put_records``. Without one, creating an ``awsKinesis`` subscription is refused (400) instead of
accepting subscriptions nothing would ever deliver.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from thingcloud.errors import BadRequest

if TYPE_CHECKING:
    from thingcloud.runtime import Runtime

NOT_CONFIGURED = (
    "awsKinesis subscriptions are not available: no Kinesis client is configured on this server "
    "(THINGCLOUD_KINESIS_SINK)"
)


@dataclass(frozen=True)
class KinesisTarget:
    stream: str
    region: str
    key: str
    secret: str


class KinesisSink(Protocol):
    async def put_records(self, target: KinesisTarget, records: list[dict[str, Any]]) -> None:
        """Put each normalized message (REFERENCE.md §3.7) on the stream; raise to have it retried."""


_sinks: dict[str, KinesisSink] = {}


def kinesis_sink(rt: Runtime) -> KinesisSink:
    """The configured sink (built once per process and setting), or 400."""
    spec = rt.settings.kinesis_sink.strip()
    if not spec:
        raise BadRequest(NOT_CONFIGURED)
    sink = _sinks.get(spec)
    if sink is None:
        module, _, name = spec.partition(":")
        factory = getattr(importlib.import_module(module), name or "build_sink")
        sink = factory(rt)
        _sinks[spec] = sink
    return sink
