"""The daemon's one MQTT connection: session, Will and birth, reconnects with backoff, outage logs.

The results sink (`results.py`) and the trigger input (`triggers.py`) share it. What it promises:

- **A persistent session.** A stable client id; MQTT 5 `clean_start=False` with a Session Expiry Interval
  (`mqtt.session_expiry_s`) and a Receive Maximum of 65535 (so the broker hands over what it queued at once), MQTT
  3.1.1 `clean_session=False`. The broker keeps the trigger subscription, and the QoS 1 triggers sent meanwhile,
  while the daemon is away or restarting.
- **"online" means ready.** The retained `online` and the birth info go out only after every subscription's SUBACK
  on the current connection; the Will (and `close()`) leave a retained `offline`.
- **Reconnects it controls.** Its own thread connects, so the cause of a failure is known; paho's network thread runs
  for the lifetime of one connection (`reconnect_on_failure=False`), and between attempts the thread waits
  `Backoff` delays, doubling from `mqtt.reconnect_min_s` to `mqtt.reconnect_max_s` (each one kept in `delays`).
- **Outages said once.** One error when an outage starts (`mqtt_connect_failed` or `mqtt_connect_refused`, with the
  cause), a warning for each new cause, a `mqtt_still_disconnected` summary every `summary_s`, info when it ends.
  paho's own error lines (socket errors, one per lost connection) are demoted to warnings.
- **Callbacks that cannot kill paho.** Everything on paho's thread runs `guarded`: an exception is reported to the
  Supervisor (the daemon fails, loudly), never raised into paho.

Thread safety: `publish` and `ack` may be called from any thread; paho's thread-safe path is used while its network
thread runs, and `connect()` is serialised with them (`_io`), so no two threads ever write to the socket.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.errors import ConfigError
from edge.log import bind_thread, get_logger
from edge.supervise import guarded

if TYPE_CHECKING:
    from edge.config import MqttConfig
    from edge.stats import PipelineStats
    from edge.supervise import Supervisor

log = get_logger(__name__)

AckCallback = Callable[[Any], None]  # called with the broker's reason code (paho ReasonCode), on paho's thread
MessageCallback = Callable[[mqtt.MQTTMessage, int], None]  # a message and the connection epoch it came on
_CONNECT_TIMEOUT_S = 5.0  # TCP/TLS connect timeout
_EARLY_ACK_TTL_S = 5.0
_RECEIVE_MAXIMUM = 65535
_BEAT = "mqtt-connection"


class _ErrorsAsWarnings(logging.Filter):
    """paho logs every socket error at ERROR; the outage log says it once, so paho's lines become warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_PAHO_LOG = logging.getLogger("paho")
if not any(isinstance(f, _ErrorsAsWarnings) for f in _PAHO_LOG.filters):
    _PAHO_LOG.addFilter(_ErrorsAsWarnings())


@dataclass
class Backoff:
    """Reconnect delays: `min_s`, doubled after each failure, at most `max_s`; `reset()` once a connection worked."""

    min_s: float
    max_s: float
    _last: float | None = field(default=None, repr=False)

    def next(self) -> float:
        """The delay to wait before the next attempt."""
        self._last = self.min_s if self._last is None else min(self._last * 2, self.max_s)
        return self._last

    def reset(self) -> None:
        """Start again from `min_s`."""
        self._last = None


class _Outage:
    """Logs an outage the way a line engineer wants it: one error, then only news, a periodic summary, the end."""

    def __init__(self, host: str, port: int, summary_s: float) -> None:
        self.host, self.port, self.summary_s = host, port, summary_s
        self.since: float | None = None
        self.attempts = 0
        self.causes: set[str] = set()
        self.last_cause = ""
        self._summary_at = 0.0

    def lost(self, reason: str) -> None:
        """A working connection dropped: the outage starts now."""
        self.since = self._summary_at = time.monotonic()
        log.warning("mqtt_disconnected", host=self.host, port=self.port, reason=reason,
                    action="spooling verdicts and reconnecting with backoff")

    def failed(self, cause: str, *, event: str = "mqtt_connect_failed", **fields: Any) -> None:
        """One attempt failed with `cause`: an error for the outage's first, a warning for a cause not seen yet."""
        now = time.monotonic()
        if self.since is None:
            self.since = self._summary_at = now
        self.attempts += 1
        self.last_cause = cause
        if not self.causes:
            log.error(event, host=self.host, port=self.port, error=cause,
                      action="spooling verdicts and retrying with backoff", **fields)
        elif cause not in self.causes:
            log.warning("mqtt_connect_retry_failed", host=self.host, port=self.port, error=cause,
                        attempts=self.attempts, **fields)
        self.causes.add(cause)
        if now - self._summary_at >= self.summary_s:
            self._summary_at = now
            log.warning("mqtt_still_disconnected", host=self.host, port=self.port,
                        outage_s=round(now - self.since, 1), attempts=self.attempts, last_error=cause,
                        action="verdicts are spooled; retrying")

    def ended(self, session_present: bool) -> None:
        """Connected: log it, with how long the outage lasted when there was one."""
        outage = None if self.since is None else round(time.monotonic() - self.since, 1)
        log.info("mqtt_connected", host=self.host, port=self.port, session_present=session_present,
                 outage_s=outage, failed_attempts=self.attempts)
        self.since, self.attempts, self.causes = None, 0, set()


class MqttConnection:
    """One paho client and the thread that keeps it connected (see the module docstring).

    Args:
        config: The `[mqtt]` section (secrets filled in by the config loader).
        info: The retained birth message for `<prefix>/status/info`.
        stats: Gets `broker_connected`.
        supervisor: Told about any exception in a paho callback (the daemon then fails).

    Raises:
        ConfigError: TLS files missing or unusable (wrong key passphrase, not PEM).
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        info: dict[str, Any],
        stats: PipelineStats | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        prefix = config.topic_prefix
        self.status_topic = f"{prefix}/status"
        self.info_topic = f"{prefix}/status/info"
        self.trigger_topic = f"{prefix}/trigger"
        self.v5 = config.protocol == "5"
        self._info_payload = json.dumps(info, separators=(",", ":"), default=str).encode()
        self._stats = stats
        self._supervisor = supervisor
        self._cond = threading.Condition()
        self._io = threading.Lock()  # connect() and loop_start() vs publish()/ack() from other threads
        self.epoch = 0  # connections accepted so far; a message's epoch says which connection it came on
        self.connected = False  # the broker accepted the current connection
        self.ready = False  # ... and every subscription was acknowledged, "online" published
        self.connect_error: str | None = None  # the last failure's cause, for operators and tests
        self.delays: list[float] = []  # every backoff delay waited, in order
        self._accepted = False  # the current connection got a successful CONNACK
        self._closing = False
        self._subs: dict[str, tuple[int, MessageCallback]] = {}  # delivered to; a topic stays until its UNSUBACK
        self._leaving: set[str] = set()  # unsubscribed, UNSUBACK not yet seen: not subscribed again on a reconnect
        self._suback_pending: set[int] = set()
        self._unsubacks: dict[int, tuple[str, threading.Event]] = {}
        self._early_unsubacks: set[int] = set()  # UNSUBACKs that beat their registration (this connection)
        self._acks: dict[int, AckCallback] = {}
        self._early: dict[int, tuple[Any, float]] = {}  # mid -> (reason, when): PUBACKs that beat registration
        self._stopping = threading.Event()
        self._down = threading.Event()
        self._failed_attempt = threading.Event()
        self._outage = _Outage(config.host, config.port, max(5.0, min(300.0, 20 * config.reconnect_max_s)))
        self._connect_props: Properties | None = None
        if self.v5:
            self._connect_props = Properties(PacketTypes.CONNECT)
            self._connect_props.SessionExpiryInterval = config.session_expiry_s
            self._connect_props.ReceiveMaximum = _RECEIVE_MAXIMUM
        self._paho_alive = time.monotonic()  # last sign of life of paho's network thread (any log line)
        self._client = self._make_client()
        self._thread: threading.Thread | None = None

    # set-up ---------------------------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client_id = cfg.client_id or f"inspectd-{cfg.line}-{cfg.station}"
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else False,
            transport=cfg.transport,
            reconnect_on_failure=False,  # our thread reconnects, so it knows why an attempt failed
            manual_ack=True,  # a trigger is acknowledged once its verdict is durable (triggers.py)
        )
        client.enable_logger(_PAHO_LOG)
        client.connect_timeout = _CONNECT_TIMEOUT_S
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if cfg.username:
            password = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            self._set_tls(client)
        client.max_inflight_messages_set(cfg.max_inflight)
        # Bounded: results are paced by the forwarder (<= max_inflight); the margin is for status, masks and stats.
        client.max_queued_messages_set(cfg.max_inflight + 64)
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_unwanted_message
        client.on_log = self._on_paho_log
        return client

    def _set_tls(self, client: mqtt.Client) -> None:
        cfg = self.config
        for key in ("tls_ca", "tls_cert", "tls_key"):
            path: Path | None = getattr(cfg, key)
            if path is not None and not path.is_file():
                msg = f"mqtt.{key}: file {path} not found (needed because mqtt.tls = true)"
                raise ConfigError(msg)
        key_password = cfg.tls_key_password.get_secret_value() if cfg.tls_key_password is not None else None
        try:
            client.tls_set(
                ca_certs=str(cfg.tls_ca) if cfg.tls_ca else None,
                certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
                keyfile=str(cfg.tls_key) if cfg.tls_key else None,
                keyfile_password=key_password,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            msg = (
                f"mqtt TLS set-up failed (tls_ca={cfg.tls_ca}, tls_cert={cfg.tls_cert}, tls_key={cfg.tls_key}): {exc}; "
                "expected PEM files and, for an encrypted key, its passphrase in INSPECTD_MQTT__TLS_KEY_PASSWORD "
                "or the credential mqtt_tls_key_password"
            )
            raise ConfigError(msg) from None

    def subscribe(self, topic: str, qos: int, on_message: MessageCallback) -> None:
        """Subscribe `topic` on every connection; `on_message(msg, epoch)` runs on paho's thread: never block.

        Register before `start()`, so "online" waits for its SUBACK.
        """
        with self._cond:
            self._subs[topic] = (qos, on_message)
        self._client.message_callback_add(topic, self._message_handler(topic))
        if self.connected:
            self._send_subscribe(topic, qos)

    def unsubscribe(self, topic: str, timeout: float) -> bool:
        """Stop `topic` (no resubscribe on later connections); wait up to `timeout` for the UNSUBACK.

        True once the broker confirmed it: no message of `topic` arrives after that. Until then its messages are
        still delivered: the broker answers UNSUBSCRIBE after the messages it forwarded earlier, and those it
        accepted from the publisher (a PLC told "Success") must reach the pipeline.
        """
        with self._cond:
            if not self.connected:
                self._subs.pop(topic, None)
                return False
            self._leaving.add(topic)
        with self._io:
            rc, mid = self._client.unsubscribe(topic)
        done = threading.Event()
        with self._cond:
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                self._leaving.discard(topic)
                self._subs.pop(topic, None)
                return False
            self._unsubacks[mid] = (topic, done)
            if mid in self._early_unsubacks:  # the UNSUBACK beat this registration
                self._early_unsubacks.discard(mid)
                self._unsubscribed(mid)
        return done.wait(timeout)

    # the connection thread ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting (and reconnecting, until `close`)."""
        self._thread = threading.Thread(target=self._run, name="mqtt-connection", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        bind_thread(stage="mqtt")
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        while not self._stopping.is_set():
            self._beat()
            if self._attempt():
                if self._serve_connection():
                    backoff.reset()
                if self._stopping.is_set():
                    return
            delay = backoff.next()
            self.delays.append(delay)
            self._sleep(delay)

    def _attempt(self) -> bool:
        """One connect (TCP, TLS, CONNECT sent) and paho's network thread for it; False when it failed."""
        cfg = self.config
        self._down.clear()
        self._accepted = False
        with self._io:
            if self._stopping.is_set():
                return False
            try:
                if self.v5:
                    self._client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False,
                                         properties=self._connect_props)
                else:
                    self._client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
            except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
                self.connect_error = f"cannot connect to broker {cfg.host}:{cfg.port}: {exc}"
                self._outage.failed(str(exc))
                self._failed_attempt.set()
                return False
            self._paho_alive = time.monotonic()
            self._client.loop_start()
        return True

    def _serve_connection(self) -> bool:
        """Wait until the connection ends (or `close`); True when the broker had accepted it.

        Beats only while paho's network thread shows signs of life (it logs every packet, and pings at least every
        keepalive): a hung paho thread stops the beat, so the watchdog and the supervisor's stuck check see it.
        """
        while not self._down.wait(1.0):
            if time.monotonic() - self._paho_alive <= 2 * self.config.keepalive_s + 5.0:
                self._beat()
            if self._stopping.is_set():
                return self._accepted
        stop_loop(self._client)  # paho's thread has left its loop (reconnect_on_failure is off): join it
        return self._accepted

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds` (or until `close`), beating."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not self._stopping.wait(min(left, 1.0)):
            self._beat()

    def _beat(self) -> None:
        if self._stats is not None:
            self._stats.beat(_BEAT)

    # paho callbacks (paho's network thread: guarded, never blocking) ------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any) -> None:
        with guarded(self._supervisor, "mqtt-on-connect"):
            cfg = self.config
            if reason.is_failure:
                self.connect_error = f"broker {cfg.host}:{cfg.port} refused the connection: {reason}"
                hint = "check the broker's listener settings"
                if str(reason) in {"Not authorized", "Bad user name or password"}:
                    hint = ("check mqtt.username and the password in INSPECTD_MQTT__PASSWORD or the credential "
                            "mqtt_password")
                self._outage.failed(str(reason), event="mqtt_connect_refused", reason=str(reason), hint=hint)
                self._failed_attempt.set()
                return
            with self._cond:
                self.epoch += 1
                self._early_unsubacks.clear()
                self.connected = self._accepted = True
                self.connect_error = None
                subs = {topic: qos for topic, (qos, _) in self._subs.items() if topic not in self._leaving}
                self._suback_pending = set()
            session = bool(getattr(flags, "session_present", False))
            self._outage.ended(session)
            self._update_stats()
            if session and self.trigger_topic not in subs:  # a triggered-mode run's session: drop what it kept
                client.unsubscribe(self.trigger_topic)
            for topic, qos in subs.items():
                self._send_subscribe(topic, qos)
            if not subs:
                self._go_online()

    def _send_subscribe(self, topic: str, qos: int) -> None:
        # Retained triggers are old events, not parts in front of the camera: never ask for them (MQTT 5).
        options = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND) if self.v5 else None
        rc, mid = self._client.subscribe(topic, qos=0 if options else qos, options=options)
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            with self._cond:
                self._suback_pending.add(mid)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: Any, _props: Any) -> None:
        with guarded(self._supervisor, "mqtt-on-subscribe"):
            refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
            if refused:
                msg = f"the broker refused the subscription ({', '.join(refused)}): check its ACL for this client"
                raise ConfigError(msg)
            with self._cond:
                self._suback_pending.discard(mid)
                done = not self._suback_pending
            if done:
                self._go_online()

    def _go_online(self) -> None:
        """Every subscription is in place: say "online" (retained), then what runs (paho's thread)."""
        with self._cond:
            if self._closing or self.ready:
                return
        self.publish(self.status_topic, "online", 1, retain=True)
        self.publish(self.info_topic, self._info_payload, 1, retain=True)
        with self._cond:
            self.ready = True
            self._cond.notify_all()

    def _on_unsubscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, _reasons: Any, _props: Any) -> None:
        with guarded(self._supervisor, "mqtt-on-unsubscribe"), self._cond:
            if mid in self._unsubacks:
                self._unsubscribed(mid)
            else:
                self._early_unsubacks.add(mid)

    def _unsubscribed(self, mid: int) -> None:
        """The broker confirmed UNSUBSCRIBE `mid`: its topic's messages are no longer delivered (lock held)."""
        topic, done = self._unsubacks.pop(mid)
        self._subs.pop(topic, None)
        self._leaving.discard(topic)
        done.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with guarded(self._supervisor, "mqtt-on-disconnect"):
            with self._cond:
                was_up = self.connected
                self.connected = self.ready = False
                self._cond.notify_all()
            if was_up and not self._stopping.is_set():
                self._outage.lost(str(reason))
            self._update_stats()
            self._down.set()

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        with guarded(self._supervisor, "mqtt-on-publish"):
            with self._cond:
                callback = self._acks.pop(mid, None)
                if callback is None:
                    now = time.monotonic()
                    self._early = {m: e for m, e in self._early.items() if now - e[1] < _EARLY_ACK_TTL_S}
                    self._early[mid] = (reason, now)
                    return
            callback(reason)

    def _on_paho_log(self, _client: mqtt.Client, _userdata: Any, _level: int, _buf: str) -> None:
        """Any paho log line (every packet, every ping) is a sign that its network thread is alive."""
        self._paho_alive = time.monotonic()

    def _on_unwanted_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """A message no subscription of this run wants (a session kept from an earlier run): acknowledge, say so."""
        with guarded(self._supervisor, "mqtt-on-message"):
            log.warning("mqtt_message_ignored", topic=msg.topic, note="kept by the broker for an earlier run of this "
                        "client id (e.g. a trigger while pipeline.mode was 'triggered'); not inspected")
            if msg.qos > 0:
                with self._cond:
                    epoch = self.epoch
                self.ack(msg.mid, msg.qos, epoch)

    def _message_handler(self, topic: str) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
        def handle(_client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
            with guarded(self._supervisor, f"mqtt-on-message {topic}"):
                with self._cond:
                    entry = self._subs.get(topic)
                    epoch = self.epoch
                if entry is not None:
                    entry[1](msg, epoch)
                else:  # only after an unconfirmed unsubscribe (e.g. while disconnected): never silently
                    log.warning("mqtt_message_after_unsubscribe", topic=msg.topic, mid=msg.mid,
                                note="not acknowledged: the broker keeps it for this client id's next start")

        return handle

    # public API ---------------------------------------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes | str, qos: int, *, retain: bool = False, props: Any = None,
        on_ack: AckCallback | None = None,
    ) -> int | None:
        """Hand a message to paho; its PUBACK reason goes to `on_ack` (paho's thread). None if paho did not take it.

        QoS 1 messages published while disconnected are queued by paho and sent after the reconnect.
        """
        with self._io:
            try:
                info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
            except (ValueError, RuntimeError) as exc:
                log.error("mqtt_publish_failed", topic=topic, error=str(exc))
                return None
        taken = info.rc == mqtt.MQTT_ERR_SUCCESS or (info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0)
        if not taken:
            log.debug("mqtt_publish_not_queued", topic=topic, reason=mqtt.error_string(info.rc))
            return None
        if qos == 0:
            return info.mid
        callback = on_ack or _ignore
        with self._cond:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._acks[info.mid] = callback
                return info.mid
        callback(early[0])
        return info.mid

    def ack(self, mid: int, qos: int, epoch: int) -> bool:
        """PUBACK a message received on connection `epoch`; False (nothing sent) if that connection is gone.

        After a reconnect the broker redelivers what was not acknowledged (MQTT forbids acknowledging it on the new
        connection with the old packet id).
        """
        with self._cond:
            if epoch != self.epoch or not self.connected:
                return False
        with self._io:
            return self._client.ack(mid, qos) == mqtt.MQTT_ERR_SUCCESS

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected, subscribed and "online"; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.ready, timeout=timeout)

    def wait_connect_failed(self, timeout: float) -> bool:
        """Wait until a connection attempt has failed or been refused (`connect_error` says why); False on timeout."""
        return self._failed_attempt.wait(timeout)

    def close(self, deadline: float) -> None:
        """Publish retained "offline" (while connected), disconnect, and stop reconnecting, by `deadline`."""
        with self._cond:
            self._closing = True
            connected = self.connected
        if connected:
            sent = threading.Event()
            if self.publish(self.status_topic, "offline", 1, retain=True, on_ack=lambda _r: sent.set()) is not None:
                sent.wait(max(0.0, min(2.0, deadline - time.monotonic())))
        self._stopping.set()
        with self._io:
            self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=_CONNECT_TIMEOUT_S + 1.0)  # it may be inside a connect()
        stop_loop(self._client)
        with self._cond:
            self.connected = self.ready = False
        self._update_stats()

    def _update_stats(self) -> None:
        if self._stats is not None:
            self._stats.set_broker(self.connected)


def stop_loop(client: mqtt.Client) -> None:
    """`client.loop_stop()`, tolerating paho's network thread ending in the middle of it.

    paho 2.x checks its `_thread`, then joins it, while the thread's last act is to set `_thread = None`: after a
    disconnect the thread can finish between the two and `loop_stop` raises AttributeError on None (seen in a test
    teardown under CPU pressure). Then there is nothing left to join.
    """
    try:
        client.loop_stop()
    except AttributeError:
        log.debug("mqtt_loop_already_stopped")


def _ignore(_reason: Any) -> None:
    """The acknowledgement of a message nobody tracks (status, masks)."""


def no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """Paho's on_socket_open: turn Nagle's algorithm off on a TCP connection.

    paho leaves it on, so a small packet sent while the previous one (a PUBACK) is not yet acknowledged waits for the
    broker's delayed ACK: ~40 ms on Linux, twice per triggered part (trigger in, verdict out). Measured on loopback:
    trigger -> verdict 92 ms median with Nagle, see README (Industrial cameras, round trip).
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass  # a unix socket or a websocket wrapper: no Nagle to turn off
