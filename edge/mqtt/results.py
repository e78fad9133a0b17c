"""The results sink: every verdict to `<prefix>/result` through the on-disk spool; masks and stats beside it.

How a verdict travels: `publish()` (the pipeline's publish thread) appends it to the `Spool` and returns once it is
stored (durable per `mqtt.spool_fsync`), so the pipeline may then acknowledge the part's trigger. The forwarder
thread reads the spool in order and hands records to the connection, at most `mqtt.max_inflight` unacknowledged at a
time. The broker's PUBACK (paho's thread) is only noted in memory; the forwarder retires it in the spool, so paho's
thread never touches the disk.

After a reconnect paho re-sends what was in flight (same message, DUP flag); the forwarder waits for those before it
sends newer records, so the subscriber sees verdicts in order. Delivery is at-least-once: a duplicate carries the same
`seq` and the same bytes.

**The spool cannot store a verdict** (disk full, I/O error): `spool_write_failed` is logged (error) and counted. While
the broker is up the verdict is sent directly, after everything spooled before it, and `publish()` returns once the
broker acknowledged it. When that is impossible too, `publish()` raises `VerdictLostError`: the pipeline stops
admitting frames and the daemon exits non-zero.

**Nobody subscribed.** MQTT 5 PUBACK reason 0x10 means the broker accepted the verdict and dropped it. The daemon's
guarantee ends at the broker's acknowledgement, so it counts as delivered; it is logged as `no_subscribers`
(rate-limited) and counted. With `mqtt.require_subscriber = true` it stays in the spool instead and is sent again,
oldest first and one at a time (backoff from `mqtt.reconnect_min_s` to `reconnect_max_s`), until a subscriber takes it.

Masks and stats are not spooled: they are sent when connected and dropped (counted) when not.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.errors import VerdictLostError
from edge.log import bind_thread, get_logger
from edge.mqtt.connection import Backoff
from edge.mqtt.spool import Record, SpoolError
from edge.postprocess import mask_png

if TYPE_CHECKING:
    from edge.config import MqttConfig
    from edge.mqtt.connection import MqttConnection
    from edge.mqtt.spool import Spool
    from edge.stats import PipelineStats
    from edge.verdict import Inspection, Verdict

log = get_logger(__name__)
NO_MATCHING_SUBSCRIBERS = 0x10
_STALE_GRACE_S = 10.0  # after a reconnect, wait at most this long for paho's re-sends before sending newer records
_LOG_EVERY_S = 60.0
_BEAT = "mqtt-forward"


class MqttSink:
    """Publishes inspections on `<prefix>/result` (spooled), `<prefix>/mask` and `<prefix>/stats`.

    Args:
        config: The `[mqtt]` section.
        connection: The daemon's MQTT connection (started and closed by the daemon).
        spool: The open spool of `mqtt.spool_dir` (closed by the daemon after this sink).
        stats: Gets `broker_connected`, `spool_depth` and the counters below.
        before_direct_send: Called with a verdict's seq just before it goes out without the spool (so a crash
            right after cannot reuse the seq: `SeqCounter.publishing`).
    """

    def __init__(
        self,
        config: MqttConfig,
        connection: MqttConnection,
        spool: Spool,
        *,
        stats: PipelineStats | None = None,
        before_direct_send: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.result_topic = f"{config.topic_prefix}/result"
        self.mask_topic = f"{config.topic_prefix}/mask"
        self.stats_topic = f"{config.topic_prefix}/stats"
        self._connection = connection
        self._spool = spool
        self._stats = stats
        self._before_direct_send = before_direct_send
        self._v5 = connection.v5
        self._result_props: Any = None  # built once: paho's Properties cost ~0.5 ms each
        if self._v5:
            self._result_props = Properties(PacketTypes.PUBLISH)
            self._result_props.ContentType = "application/json"
        self._cond = threading.Condition()
        self._inflight: dict[int, tuple[int, int]] = {}  # rid -> (seq, connection epoch it was sent on)
        self._acked: list[tuple[int, int, Any]] = []  # (rid, seq, reason) noted on paho's thread, retired here
        self._refused: set[int] = set()  # rids nobody subscribed to (require_subscriber), to send again
        self._retry = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._retry_at = 0.0
        self._probing = False  # after a refusal: one record at a time until a subscriber takes one
        self._sending = False
        self._epoch_seen = 0
        self._epoch_since = time.monotonic()
        self._stopping = False
        self._closed = False
        self.masks_dropped = 0
        self.no_subscribers = 0
        self.lost = 0  # verdicts the broker refused for good (a failure reason code)
        self._logged_at: dict[str, float] = {}
        self._thread = threading.Thread(target=self._forward, name="mqtt-forward", daemon=True)
        self._thread.start()
        self._update_stats()

    # the forwarder ------------------------------------------------------------------------------------------------
    def _forward(self) -> None:
        bind_thread(stage="mqtt-forward")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._acked) or self._can_send(), timeout=0.25)
                if self._stopping:
                    return
                acked, self._acked = self._acked, []
            if self._stats is not None:
                self._stats.beat(_BEAT)
            for rid, seq, reason in acked:
                self._retire(rid, seq, reason)
            self._spool.sync_if_due()
            self._resend_refused_when_due()
            while True:
                with self._cond:
                    if self._stopping or not self._can_send():
                        break
                    self._sending = True  # between reading a record and handing it to paho (see _send_direct)
                try:
                    record = self._spool.read_next()
                    if record is not None:
                        self._send_record(record)
                finally:
                    with self._cond:
                        self._sending = False
                        self._cond.notify_all()
                if record is None:
                    break
            self._update_stats()

    def _can_send(self) -> bool:
        """Connected, paho's re-sends done, window open, nothing refused waiting, something unsent (lock held)."""
        if not self._connection.connected or self._spool.unread == 0 or self._refused:
            return False
        window = 1 if self._probing else self.config.max_inflight
        if len(self._inflight) >= window:
            return False
        epoch = self._connection.epoch
        if epoch != self._epoch_seen:
            self._epoch_seen, self._epoch_since = epoch, time.monotonic()
        stale = any(sent_on < epoch for _, sent_on in self._inflight.values())
        return not stale or time.monotonic() - self._epoch_since > _STALE_GRACE_S

    def _send_record(self, record: Record) -> None:
        with self._cond:
            self._inflight[record.rid] = (record.seq, self._connection.epoch)
        mid = self._connection.publish(
            self.result_topic, record.payload, self.config.qos, props=self._result_props,
            on_ack=functools.partial(self._on_ack, record.rid, record.seq),
        )
        if mid is None:  # not taken by paho (QoS 0 while disconnected, queue full): send it again later
            with self._cond:
                self._inflight.pop(record.rid, None)
            self._spool.rewind(record.rid)
        elif self.config.qos == 0:
            self._on_ack(record.rid, record.seq, None)

    def _on_ack(self, rid: int, seq: int, reason: Any) -> None:
        """The broker acknowledged a record (paho's thread): note it for the forwarder, touch nothing on disk."""
        with self._cond:
            self._inflight.pop(rid, None)
            self._acked.append((rid, seq, reason))
            self._cond.notify_all()

    def _retire(self, rid: int, seq: int, reason: Any) -> None:
        """Forwarder: settle one acknowledgement in the spool (or keep the record, when nobody subscribed)."""
        code = getattr(reason, "value", 0)
        if code == NO_MATCHING_SUBSCRIBERS:
            self.no_subscribers += 1
            if self._stats is not None:
                self._stats.count("no_subscribers")
            self._log_rarely(
                "no_subscribers", seq=seq, count=self.no_subscribers, topic=self.result_topic,
                effect="kept in the spool and sent again (mqtt.require_subscriber)" if self.config.require_subscriber
                else "the broker accepted and dropped it: no subscriber; the daemon's guarantee ends at the broker",
            )
            if self.config.require_subscriber:
                with self._cond:
                    if not self._refused:
                        self._retry_at = time.monotonic() + self._retry.next()
                    self._refused.add(rid)
                return
        elif getattr(reason, "is_failure", False):
            self.lost += 1
            if self._stats is not None:
                self._stats.count("verdicts_lost")
            log.error("mqtt_publish_refused", seq=seq, reason=str(reason), note="the broker will not deliver it: LOST")
        elif self._probing:
            with self._cond:
                self._probing = False
                self._retry.reset()
        self._spool.ack(rid)
        with self._cond:
            self._cond.notify_all()

    def _resend_refused_when_due(self) -> None:
        """require_subscriber: after the backoff delay, hand the refused records out again, oldest first."""
        with self._cond:
            if not self._refused or self._inflight or time.monotonic() < self._retry_at:
                return
            first = min(self._refused)
            self._refused.clear()
            self._probing = True
        self._spool.rewind(first)

    def _log_rarely(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._logged_at.get(event, -math.inf) >= _LOG_EVERY_S:
            self._logged_at[event] = now
            log.warning(event, **fields)

    # public API ---------------------------------------------------------------------------------------------------
    def publish(self, inspection: Inspection) -> None:
        """Spool the verdict for `<prefix>/result` (sent by the forwarder) and send the mask if wanted and connected.

        Returns once the verdict is stored in the spool or, if the spool failed, acknowledged by the broker.

        Raises:
            VerdictLostError: neither was possible; the verdict is lost.
        """
        if self._closed:
            msg = f"MqttSink.publish after close (verdict seq {inspection.verdict.seq})"
            raise RuntimeError(msg)
        verdict = inspection.verdict
        payload = verdict.to_json().encode()
        try:
            self._spool.append(verdict.seq, payload)
        except SpoolError as exc:
            self._send_direct(verdict, payload, exc)
        with self._cond:
            self._cond.notify_all()
        if inspection.mask is not None and self._wants_mask(verdict):
            self._publish_mask(inspection)
        self._update_stats()

    def _send_direct(self, verdict: Verdict, payload: bytes, exc: SpoolError) -> None:
        """The spool failed: send after everything spooled before it, and wait for the broker's acknowledgement."""
        self._update_stats()
        self._log_failure(exc)
        timeout = max(10.0, 2.0 * self.config.keepalive_s)
        deadline = time.monotonic() + timeout
        connection = self._connection
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or not connection.connected or self._all_handed_over(),
                                timeout=timeout)
            ready = connection.connected and self._all_handed_over()
        if not ready:
            msg = f"verdict seq {verdict.seq}: the spool cannot store it ({exc}) and the broker is not connected"
            raise VerdictLostError(msg)
        if self._before_direct_send is not None:
            self._before_direct_send(verdict.seq)
        acked = threading.Event()
        mid = connection.publish(self.result_topic, payload, self.config.qos, props=self._result_props,
                                 on_ack=lambda _reason: acked.set())
        if mid is None or (self.config.qos > 0 and not acked.wait(max(0.0, deadline - time.monotonic()))):
            msg = f"verdict seq {verdict.seq}: the spool cannot store it ({exc}) and the broker did not acknowledge it"
            raise VerdictLostError(msg)

    def _all_handed_over(self) -> bool:
        """Every spooled record is in paho's hands, so one sent now goes out after them (lock held)."""
        return self._spool.unread == 0 and not self._sending and not self._refused

    def _log_failure(self, exc: SpoolError) -> None:
        now = time.monotonic()
        if now - self._logged_at.get("spool_write_failed", -math.inf) >= 10.0:
            self._logged_at["spool_write_failed"] = now
            log.error("spool_write_failed", error=str(exc), failures=self._spool.write_failures,
                      action="sending verdicts straight to the broker while it is connected; if it is not, they "
                      "are lost and inspectd stops",
                      hint=f"free space in (or repair) mqtt.spool_dir {self._spool.directory}")

    def _wants_mask(self, verdict: Verdict) -> bool:
        mode = self.config.publish_mask
        return mode == "always" or (mode == "fail" and verdict.outcome == "fail")

    def _publish_mask(self, inspection: Inspection) -> None:
        if not self._connection.connected or inspection.mask is None:
            self.masks_dropped += 1
            log.debug("mqtt_mask_dropped", seq=inspection.verdict.seq, reason="broker not connected")
            return
        png = mask_png(inspection.mask, inspection.frame_geometry())
        seq = inspection.verdict.seq
        if self._v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "image/png"
            props.UserProperty = [("seq", str(seq)), ("frame_id", str(inspection.verdict.frame_id))]
            mid = self._connection.publish(self.mask_topic, png, self.config.qos, props=props)
        else:
            mid = self._connection.publish(f"{self.mask_topic}/{seq}", png, self.config.qos)
        if mid is None:
            self.masks_dropped += 1

    def publish_stats(self, snapshot: Mapping[str, Any]) -> None:
        """Send `snapshot` (plus this sink's own numbers) on `<prefix>/stats`, QoS 0; skipped while disconnected."""
        if not self._connection.connected:
            return
        payload = dict(snapshot)
        payload["mqtt"] = {
            "connected": True,
            "spool_depth": self._spool.depth,
            "spool_dropped": self._spool.dropped,
            "spool_write_failed": self._spool.write_failures,
            "masks_dropped": self.masks_dropped,
            "no_subscribers": self.no_subscribers,
        }
        self._connection.publish(self.stats_topic, json.dumps(payload, separators=(",", ":"), default=str), 0)

    def wait_delivered(self, timeout: float) -> bool:
        """Wait until every published verdict is acknowledged by the broker (spool empty); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._spool.depth == 0 and not self._acked, timeout=timeout)

    @property
    def spool_depth(self) -> int:
        """Verdicts not yet acknowledged by the broker."""
        return self._spool.depth

    def close(self, deadline: float = math.inf) -> None:
        """Flush while connected (until `deadline`, at least 0.5 s, at most 5 s), then stop the forwarder.

        What is still undelivered stays in the spool for the next start.
        """
        if self._closed:
            return
        self._closed = True
        if self._connection.connected:
            self.wait_delivered(min(5.0, max(0.5, deadline - time.monotonic())))
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        with self._cond:
            acked, self._acked = self._acked, []
        for rid, seq, reason in acked:
            self._retire(rid, seq, reason)
        self._update_stats()
        log.info("mqtt_results_closed", undelivered=self._spool.depth, spool_dropped=self._spool.dropped)

    def __enter__(self) -> MqttSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _update_stats(self) -> None:
        if self._stats is not None:
            self._stats.set_broker(self._connection.connected, self._spool.depth)
            self._stats.set_counter("spool_write_failed", self._spool.write_failures)
            self._stats.set_counter("spool_dropped", self._spool.dropped)
