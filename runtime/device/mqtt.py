"""MQTT publisher with Home Assistant discovery (``dymn-listen --mqtt URL``).

URL: ``mqtt://[user:pass@]host[:1883][/prefix][?node=NAME&discovery=homeassistant&qos=1&queue=1000&ca=FILE]``
(``mqtts://`` = TLS, port 8883, system CAs unless ``ca=``, which must be a readable file).
A password is best kept out of the URL (command lines are visible in ``ps`` and in a unit
file): with ``user@host`` and no password in the URL, the password is read from the
environment variable ``DYMN_EDGE_MQTT_PASSWORD`` (a systemd ``EnvironmentFile=`` with mode
0600; ``dymn-listen --print-systemd-unit --env-file``). With ``B = prefix/node``
(prefix default ``dymn-edge``, node default the host name):

- ``B/event``: one JSON message per onset and per offset (QoS ``qos``, not retained), with
  ``peak_raw_prob`` (the highest window score) and ``peak_smoothed_prob`` (what crossed the
  thresholds);
- ``B/last_event``: the latest of those, retained (a Home Assistant ``sensor``);
- ``B/label/<label>/state``: ``ON`` / ``OFF``, retained, for each watched label (one
  Home Assistant ``binary_sensor`` each);
- ``B/availability``: ``online`` retained while running; ``offline`` on a clean stop and,
  as the broker-side last will, when the process dies;
- ``<discovery>/binary_sensor/<node>/<label>/config`` and
  ``<discovery>/sensor/<node>/last_event/config``: retained discovery configs
  (``discovery=none`` turns them off), re-sent on every (re)connect.

The broker may be down at start or go away at any time: tagging never waits for it.
paho-mqtt reconnects with exponential backoff (1 s .. 60 s), the failure is logged once
(and the recovery once), and QoS 1 messages wait in paho's bounded queue (``queue``
messages; when full, new ones are refused and counted as dropped). The summary gets
``mqtt_sent`` / ``mqtt_queued`` (published while offline) / ``mqtt_dropped`` / ``mqtt_unsent``
(still unacknowledged at the stop; up to 5 s are given while connected) / ``mqtt_reconnects``,
counting event messages.
paho-mqtt is imported only here (``pip install 'dymn-edge[device]'``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dymn_edge.errors import DymnEdgeError
from dymn_edge.labels import Label
from dymn_edge.runtime.device.eventlog import utc_iso
from dymn_edge.runtime.events import Event
from dymn_edge.runtime.sinks import EventSink

log = logging.getLogger(__name__)

__all__ = ["MqttConfig", "MqttPublisher", "MqttError", "import_paho", "parse_mqtt_url", "slug", "PASSWORD_ENV"]

CLOSE_GRACE_S = 5.0
#: Where the broker password comes from when the URL names a user but no password.
PASSWORD_ENV = "DYMN_EDGE_MQTT_PASSWORD"


class MqttError(DymnEdgeError):
    """A bad --mqtt URL or a missing paho-mqtt."""


def slug(text: str) -> str:
    """Topic / unique_id-safe form of a label or host name."""
    return re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_") or "x"


@dataclass
class MqttConfig:
    """What the --mqtt URL says."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    prefix: str = "dymn-edge"
    node: str = field(default_factory=lambda: slug(socket.gethostname()))
    discovery: str | None = "homeassistant"
    qos: int = 1
    queue: int = 1000
    keepalive: int = 30
    ca: str | None = None

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def availability_topic(self) -> str:
        return f"{self.base}/availability"

    @property
    def event_topic(self) -> str:
        return f"{self.base}/event"

    @property
    def last_event_topic(self) -> str:
        return f"{self.base}/last_event"

    def state_topic(self, label: Label) -> str:
        return f"{self.base}/label/{slug(label.display_name)}/state"


def parse_mqtt_url(url: str, env: Mapping[str, str] | None = None) -> MqttConfig:
    """MqttConfig from ``mqtt[s]://user:pass@host:port/prefix?node=..`` (MqttError if bad).

    ``env`` (default ``os.environ``) supplies :data:`PASSWORD_ENV` for a user without a
    password in the URL."""
    try:
        u = urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL" for mqtt://[::1
        raise MqttError(f"--mqtt URL is malformed ({exc}): '{url}'") from None
    if u.scheme not in ("mqtt", "mqtts"):
        raise MqttError(f"--mqtt URL must start with mqtt:// or mqtts://, got '{url}'")
    try:
        port = u.port
    except ValueError as exc:
        raise MqttError(f"--mqtt URL has a bad port: '{url}'") from exc
    if not u.hostname:
        raise MqttError(f"--mqtt URL has no host: '{url}'")
    tls = u.scheme == "mqtts"
    cfg = MqttConfig(host=u.hostname, port=port or (8883 if tls else 1883), tls=tls,
                     username=unquote(u.username) if u.username else None,
                     password=unquote(u.password) if u.password else None)
    env = os.environ if env is None else env
    if cfg.username is not None and cfg.password is None and env.get(PASSWORD_ENV):
        cfg.password = env[PASSWORD_ENV]
    prefix = u.path.strip("/")
    if u.fragment or url.rstrip().endswith("#"):
        raise MqttError(f"--mqtt topic prefix must not hold MQTT wildcards (# or +): '{url}'")
    if prefix:
        if any(c in prefix for c in "+#"):
            raise MqttError(f"--mqtt topic prefix must not hold MQTT wildcards: '{prefix}'")
        cfg.prefix = prefix
    _apply_query(cfg, u.query)
    return cfg


def _apply_query(cfg: MqttConfig, query_text: str) -> None:
    """The URL's ``?node=..&discovery=..&qos=..&queue=..&keepalive=..&ca=..`` into ``cfg``."""
    tls = cfg.tls
    query = parse_qs(query_text, keep_blank_values=True)
    allowed = {"node", "discovery", "qos", "queue", "keepalive", "ca"}
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise MqttError(f"--mqtt URL: unknown option(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(sorted(allowed))}")
    q = {k: v[-1] for k, v in query.items()}
    try:
        if "node" in q:
            cfg.node = slug(q["node"])
        if "discovery" in q:
            cfg.discovery = None if q["discovery"].lower() in ("", "none", "off", "0") else q["discovery"]
        if "qos" in q:
            cfg.qos = int(q["qos"])
        if "queue" in q:
            cfg.queue = int(q["queue"])
        if "keepalive" in q:
            cfg.keepalive = int(q["keepalive"])
    except ValueError as exc:
        raise MqttError(f"--mqtt URL: bad number in options ({exc})") from exc
    if cfg.qos not in (0, 1, 2):
        raise MqttError(f"--mqtt qos must be 0, 1 or 2, got {cfg.qos}")
    if cfg.queue < 1:
        raise MqttError(f"--mqtt queue must be >= 1 message, got {cfg.queue}")
    if cfg.keepalive < 5:
        raise MqttError(f"--mqtt keepalive must be >= 5 s, got {cfg.keepalive}")
    cfg.ca = q.get("ca") or None
    if cfg.ca is not None:
        if not tls:
            raise MqttError(f"--mqtt ca={cfg.ca} needs an mqtts:// URL (TLS)")
        if not os.path.isfile(cfg.ca) or not os.access(cfg.ca, os.R_OK):
            raise MqttError(f"--mqtt CA file not found or not readable: {cfg.ca}")


def import_paho() -> Any:
    """paho-mqtt's client module, or a one-line MqttError (also a check before a start)."""
    try:
        import paho.mqtt.client as paho  # noqa: PLC0415 (optional: the [device] extra)
    except ImportError as exc:
        raise MqttError("--mqtt needs paho-mqtt: pip install 'dymn-edge[device]'") from exc
    return paho


def event_payload(ev: Event, *, node: str, model: str | None) -> dict[str, Any]:
    """The JSON of one onset / offset message."""
    obj: dict[str, Any] = {"event": ev.kind, "label": ev.label.display_name, "mid": ev.label.mid,
                           "index": ev.label.index, "start_s": round(ev.start, 3),
                           "peak_raw_prob": None if ev.peak_raw is None else round(ev.peak_raw, 6),
                           "peak_smoothed_prob": round(ev.probability, 6), "node": node}
    if ev.start_utc is not None:
        obj["start_utc"] = utc_iso(ev.start_utc)
    if ev.kind == "end":
        obj["end_s"] = round(float(ev.end if ev.end is not None else ev.start), 3)
        obj["duration_s"] = round(ev.duration or 0.0, 3)
        if ev.end_utc is not None:
            obj["end_utc"] = utc_iso(ev.end_utc)
        if ev.mean is not None:
            obj["mean_prob"] = round(ev.mean, 6)
        if ev.clip:
            obj["clip"] = ev.clip
    if model:
        obj["model"] = model
    return obj


def _acked(info: Any) -> bool:
    """Whether paho got the broker's acknowledgement. ``is_published`` raises for a message
    first published while offline (its rc stays NO_CONN) even after paho re-sent it on
    reconnect, so fall back to the flag paho sets on the acknowledgement."""
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):
        return bool(getattr(info, "_published", False))


class MqttPublisher(EventSink):
    """Sink publishing events, states, availability and discovery to one broker."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig, labels: Sequence[Label], *, watched: Sequence[int] = (),
                 model_name: str = "", model_file: str | None = None, version: str = "") -> None:
        paho = import_paho()
        self.paho = paho
        self.cfg = cfg
        self.labels = list(labels)
        self.watched = [self.labels[i] for i in dict.fromkeys(watched)]
        self.model_name = model_name
        self.model_file = model_file
        self.version = version
        self._lock = threading.Lock()
        self._pending: list[Any] = []  # MQTTMessageInfo of event messages not yet acknowledged
        self.sent = self.queued = self.dropped = self.reconnects = 0
        self.connected = False
        self._ever_connected = False
        self._down_since: float | None = None
        self._down_logged = False
        client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                             # the pid: two listeners on one host must not take over each other
                             client_id=f"dymn-edge-{cfg.node}-{os.getpid()}"[:64],
                             clean_session=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            try:
                client.tls_set(ca_certs=cfg.ca)
            except (OSError, ValueError) as exc:  # ssl.SSLError: a CA file that holds no certificate
                raise MqttError(f"--mqtt TLS setup failed (ca={cfg.ca or 'system CAs'}): {exc}") from exc
        client.will_set(cfg.availability_topic, "offline", qos=1, retain=True)
        client.max_queued_messages_set(cfg.queue)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self.client = client
        # initial states (queued until connected): nothing is sounding yet
        for lab in self.watched:
            self._publish(cfg.state_topic(lab), "OFF", retain=True)
        try:
            client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        except (OSError, ValueError) as exc:
            raise MqttError(f"--mqtt {cfg.host}:{cfg.port}: {exc}") from exc
        client.loop_start()
        log.info("mqtt: publishing to %s:%d under %s", cfg.host, cfg.port, cfg.base)

    # -- paho callbacks (paho's network thread) ----------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._note_down(f"broker refused the connection: {reason_code}")
            return
        with self._lock:
            self.connected = True
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            down, self._down_since = self._down_since, None
            was_logged, self._down_logged = self._down_logged, False
        if was_logged:
            log.warning("mqtt: connected to %s:%d again after %.1f s", self.cfg.host, self.cfg.port,
                        time.monotonic() - down if down else 0.0)
        client.publish(self.cfg.availability_topic, "online", qos=1, retain=True)
        for topic, cfg in self.discovery_configs().items():
            client.publish(topic, json.dumps(cfg), qos=1, retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._lock:
            self.connected = False
        if not self._closing:
            self._note_down(f"disconnected ({reason_code})")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._note_down("cannot connect")

    def _note_down(self, why: str) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
            first, self._down_logged = not self._down_logged, True
        if first:
            log.warning("mqtt: broker %s:%d unavailable (%s); tagging goes on, messages are queued "
                        "(at most %d) and the connection retried with backoff", self.cfg.host,
                        self.cfg.port, why, self.cfg.queue)

    _closing = False

    # -- publishing ------------------------------------------------------------------------
    def _publish(self, topic: str, payload: str, *, retain: bool = False, event: bool = False) -> None:
        qos = self.cfg.qos
        # never call paho while holding self._lock: paho calls back under its own locks
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        rc = info.rc
        with self._lock:
            if rc == self.paho.MQTT_ERR_QUEUE_SIZE:
                if event:
                    self.dropped += 1
                return
            if not event:
                return
            if rc == self.paho.MQTT_ERR_NO_CONN or not self.connected:
                if qos == 0:  # QoS 0 is not queued by paho
                    self.dropped += 1
                    return
                self.queued += 1
            if qos == 0:
                self.sent += 1
            else:
                self._pending.append(info)

    def _prune(self) -> int:
        """Count acknowledged event messages as sent; return how many still wait."""
        with self._lock:
            left = [i for i in self._pending if not _acked(i)]
            self.sent += len(self._pending) - len(left)
            self._pending = left
            return len(self._pending)

    def discovery_configs(self) -> dict[str, dict[str, Any]]:
        """Home Assistant discovery topic -> config, for the watched labels and the last event."""
        c = self.cfg
        if not c.discovery:
            return {}
        device = {"identifiers": [f"dymn-edge_{c.node}"], "name": f"dymn-edge {c.node}",
                  "manufacturer": "dymn-edge", "model": self.model_name or "DyMN audio tagger",
                  "sw_version": self.version}
        avail = {"availability_topic": c.availability_topic, "payload_available": "online",
                 "payload_not_available": "offline"}
        out: dict[str, dict[str, Any]] = {}
        for lab in self.watched:
            s = slug(lab.display_name)
            out[f"{c.discovery}/binary_sensor/{c.node}/{s}/config"] = {
                "name": lab.display_name, "unique_id": f"{c.node}_{s}", "state_topic": c.state_topic(lab),
                "payload_on": "ON", "payload_off": "OFF", "device_class": "sound", **avail,
                "device": device}
        out[f"{c.discovery}/sensor/{c.node}/last_event/config"] = {
            "name": "Last sound event", "unique_id": f"{c.node}_last_event",
            "state_topic": c.last_event_topic, "value_template": "{{ value_json.label }}",
            "json_attributes_topic": c.last_event_topic, "icon": "mdi:waveform", **avail,
            "device": device}
        return out

    def event(self, ev: Event) -> None:
        payload = json.dumps(event_payload(ev, node=self.cfg.node, model=self.model_file))
        self._publish(self.cfg.event_topic, payload, event=True)
        self._publish(self.cfg.last_event_topic, payload, retain=True)
        if any(lab.index == ev.label.index for lab in self.watched):
            self._publish(self.cfg.state_topic(ev.label), "ON" if ev.kind == "start" else "OFF", retain=True)
        self._prune()  # bounded memory on long runs

    def close(self) -> dict[str, Any]:
        """Say offline, give queued messages a few seconds, disconnect; return the counters."""
        offline = self.client.publish(self.cfg.availability_topic, "offline", qos=1, retain=True)
        deadline = time.monotonic() + CLOSE_GRACE_S
        while (time.monotonic() < deadline and self.connected
               and (self._prune() or not _acked(offline))):
            time.sleep(0.05)
        self._closing = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        unsent = self._prune()
        if unsent:
            log.warning("mqtt: %d event message(s) still unsent at the stop", unsent)
        with self._lock:
            return {"mqtt_sent": self.sent, "mqtt_queued": self.queued, "mqtt_dropped": self.dropped,
                    "mqtt_unsent": unsent, "mqtt_reconnects": self.reconnects}
