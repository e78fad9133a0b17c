"""The trigger input: `<prefix>/trigger` messages become `Trigger`s for the pipeline, acknowledged once judged.

Every trigger message is a part in front of the camera, so every one is handed to the pipeline, whatever its bytes:

- `{"part_id": "A-17"}` gives part_id "A-17" (a number becomes its string); an empty payload, `{}` or a null
  part_id give None. A payload that is not a JSON object (or JSON too deep to parse) gives None and a warning; one
  over `mqtt.trigger_max_bytes` is not parsed at all; a part_id over 256 characters is truncated. In each of those
  cases the verdict carries a `warning` saying so, and `trigger_payload_invalid` is logged.
- The MQTT message is acknowledged (manual PUBACK) only when the pipeline settles the trigger, i.e. once the part's
  verdict is in the spool. A crash before that leaves it unacknowledged, so the broker keeps it (the daemon's session
  is persistent) and redelivers it to the next start.
- A trigger that cannot be judged on a frame taken now gets an `error` verdict instead (`Trigger.stale`): one the
  broker redelivers (DUP flag: the daemon restarted, or the connection dropped, after it arrived) and one the broker
  queued while the daemon was away (it arrives before the subscription is confirmed on this connection). The part
  it stood for is long gone; judging a later part's frame in its name would be worse than no verdict.
- A redelivery of a trigger this process already holds (the connection dropped before its PUBACK) is not a new
  part: the original's verdict acknowledges the copy.
- A retained trigger (MQTT 3.1.1 hands retained messages to every new subscription) is an old event, not a part:
  it is acknowledged and logged, no verdict. MQTT 5 subscriptions never ask for them.

`stop()` unsubscribes and waits for the broker's confirmation, so the daemon can judge every trigger it accepted
before it stops capturing.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.log import get_logger
from edge.pipeline import Trigger

if TYPE_CHECKING:
    from collections.abc import Callable

    import paho.mqtt.client as mqtt

    from edge.config import MqttConfig
    from edge.mqtt.connection import MqttConnection

log = get_logger(__name__)
PART_ID_MAX = 256
_SETTLED_KEPT = 4096  # acknowledged triggers remembered, to recognise their redeliveries


@dataclass
class _Held:
    """A trigger handed to the pipeline and not yet settled."""

    mid: int
    qos: int
    epoch: int
    digest: bytes


class TriggerInput:
    """Subscribes `<prefix>/trigger` on `connection` and hands each message to `deliver` as a `Trigger`.

    Args:
        connection: The daemon's MQTT connection (subscribe before it starts, so "online" waits for the SUBACK).
        config: The `[mqtt]` section (prefix, `trigger_max_bytes`).
        deliver: `Pipeline.trigger`; runs on paho's thread, must not block.
    """

    def __init__(self, connection: MqttConnection, config: MqttConfig, deliver: Callable[[Trigger], None]) -> None:
        self.topic = connection.trigger_topic
        self.max_bytes = config.trigger_max_bytes
        self._connection = connection
        self._deliver = deliver
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._held: dict[int, _Held] = {}
        self._held_by_mid: dict[int, int] = {}
        self._settled: OrderedDict[int, bytes] = OrderedDict()  # mid -> payload digest
        connection.subscribe(self.topic, 1, self._on_message)

    def _on_message(self, msg: mqtt.MQTTMessage, epoch: int) -> None:
        received = time.monotonic()
        payload = bytes(msg.payload)
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        if msg.retain:
            log.warning("trigger_retained_ignored", topic=self.topic,
                        note="a retained trigger is a stored copy of an old one, not a part in front of the camera; "
                        "the PLC should publish triggers with retain = false")
            self._connection.ack(msg.mid, msg.qos, epoch)
            return
        with self._lock:
            if msg.dup and self._adopt_redelivery(msg.mid, digest, epoch):
                return
            key = next(self._keys)
            self._held[key] = _Held(msg.mid, msg.qos, epoch, digest)
            self._held_by_mid[msg.mid] = key
        stale = None
        if msg.dup:
            stale = ("trigger redelivered by the broker after an inspectd restart or a lost connection: part not "
                     "inspected (its frame is gone)")
        elif not self._connection.ready:
            stale = "trigger queued by the broker while inspectd was offline: part not inspected"
        part_id, warning = parse_trigger(payload, self.max_bytes)
        self._deliver(Trigger(part_id, received, warning=warning, stale=stale,
                              settle=functools.partial(self._settle, key)))

    def _adopt_redelivery(self, mid: int, digest: bytes, epoch: int) -> bool:
        """A DUP copy of a trigger this process holds or settled: no new part (lock held). True when handled."""
        key = self._held_by_mid.get(mid)
        if key is not None and self._held[key].digest == digest:
            self._held[key].epoch = epoch  # its verdict will acknowledge this copy, on this connection
            return True
        if self._settled.get(mid) == digest:  # settled, but the PUBACK went down with the old connection
            self._connection.ack(mid, 1, epoch)
            return True
        return False

    def _settle(self, key: int) -> None:
        """The part's verdict is durable: acknowledge its trigger (pipeline's publish thread)."""
        with self._lock:
            held = self._held.pop(key, None)
            if held is None:
                return
            if self._held_by_mid.get(held.mid) == key:
                del self._held_by_mid[held.mid]
            self._settled[held.mid] = held.digest
            self._settled.move_to_end(held.mid)
            while len(self._settled) > _SETTLED_KEPT:
                self._settled.popitem(last=False)
        if held.qos > 0:
            self._connection.ack(held.mid, held.qos, held.epoch)

    def stop(self, timeout: float) -> bool:
        """Unsubscribe and wait (up to `timeout`) for the broker to confirm; True when no more triggers can come."""
        confirmed = self._connection.unsubscribe(self.topic, timeout)
        log.info("trigger_unsubscribed", topic=self.topic, confirmed=confirmed, waiting=len(self._held))
        return confirmed


def parse_trigger(payload: bytes, max_bytes: int = 65536) -> tuple[str | None, str | None]:
    """(part_id, warning) of a trigger payload `{"part_id": ...}`; whatever the bytes, this never raises.

    The warning (None when the payload is fine) says what was wrong; it is logged and carried in the verdict.
    """
    if len(payload) > max_bytes:
        warning = (f"trigger payload of {len(payload)} bytes is over mqtt.trigger_max_bytes ({max_bytes}): "
                   "not read, part_id unknown")
        log.warning("trigger_payload_invalid", size=len(payload), max_bytes=max_bytes, action="inspecting with "
                    "part_id null")
        return None, warning
    if not payload.strip():
        return None, None
    data: Any
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, too deep, an integer of a million digits
        data = None
    if not isinstance(data, dict):
        log.warning(
            "trigger_payload_invalid", payload=payload[:100].decode("utf-8", "replace"),
            expected='a JSON object like {"part_id": "A123"}', action="inspecting with part_id null",
        )
        return None, 'trigger payload is not a JSON object like {"part_id": "A123"}: part_id unknown'
    part_id = data.get("part_id")
    if part_id is None:
        return None, None
    text = part_id if isinstance(part_id, str) else str(part_id)
    if len(text) > PART_ID_MAX:
        log.warning("trigger_payload_invalid", part_id=text[:40] + "...", length=len(text),
                    action=f"part_id truncated to {PART_ID_MAX} characters")
        return text[:PART_ID_MAX], f"part_id truncated to {PART_ID_MAX} characters (it had {len(text)})"
    return text, None
