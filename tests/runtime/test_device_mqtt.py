"""MQTT publisher against a real mosquitto broker (started here on a free loopback port)
and a real paho-mqtt subscriber: messages, retained availability, Home Assistant discovery,
a broker that is down at the start, and the bounded queue's drop counter.

``Broker`` and ``Subscriber`` are reused by test_device_listen.py.
"""

from __future__ import annotations

import getpass
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import in_ci
from dymn_edge.labels import Label
from dymn_edge.runtime.events import Event
from dymn_edge.runtime.device.mqtt import PASSWORD_ENV, MqttError, MqttPublisher, parse_mqtt_url

LABELS = [Label(i, f"/m/d{i}", name) for i, name in enumerate(["zero", "one", "two", "Dog bark"])]
HA_BINARY_KEYS = {"name", "unique_id", "state_topic", "payload_on", "payload_off", "availability_topic",
                  "payload_available", "payload_not_available", "device", "device_class"}
HA_SENSOR_KEYS = {"name", "unique_id", "state_topic", "value_template", "json_attributes_topic",
                  "availability_topic", "device"}


def _mosquitto_bin() -> str:
    path = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None)
    if not path:
        msg = "mosquitto not installed (apt-get install mosquitto; .ci/run installs it)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A private mosquitto on 127.0.0.1:<free port>, with persistence so that a durable
    subscriber keeps its session across stop() / start()."""

    def __init__(self, workdir: Path, extra: str = "", anonymous: bool = True) -> None:
        self.exe = _mosquitto_bin()
        self.port = _free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        # as root mosquitto would drop to user 'mosquitto', who cannot write the private tmp dir
        # (no persistence, so no durable session across a restart): stay this user
        self.conf.write_text(f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\n"
                             f"allow_anonymous {str(anonymous).lower()}\npersistence true\n"
                             f"persistence_location {self.dir}/\nlog_dest file {self.dir}/broker.log\n{extra}")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _refusals(broker: Broker) -> int:
    """Connections the broker refused for bad credentials (its log names no client id then)."""
    log_file = broker.dir / "broker.log"
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return sum(1 for line in text.splitlines() if "disconnected, not authorised" in line)


class Subscriber:
    """paho-mqtt client subscribed to ``#`` with a durable session (QoS 1)."""

    def __init__(self, port: int, client_id: str = "dymn-edge-test-sub", *, ca: Path | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        import paho.mqtt.client as paho

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                                  client_id=client_id, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "subscriber could not connect"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe("#", qos=1)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, pred: Any, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return bool(pred())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def _ev(kind: str, i: int, start: float, end: float | None = None) -> Event:
    now = time.time()
    return Event(kind, LABELS[i], start, end, 0.9, 0.8 if end else None, start_utc=now - 1,
                 end_utc=now if end else None, peak_raw=0.99)


def _publisher(url: str, **kw: Any):
    return MqttPublisher(parse_mqtt_url(url), LABELS, model_name="dymn-s", model_file="m.onnx", **kw)


def test_url_parsing_and_errors() -> None:
    c = parse_mqtt_url("mqtts://u%40x:p%3Aw@broker.lan/home/audio?node=Garden Pi&qos=0&queue=5")
    assert (c.host, c.port, c.tls, c.username, c.password) == ("broker.lan", 8883, True, "u@x", "p:w")
    assert c.base == "home/audio/garden_pi" and c.qos == 0 and c.queue == 5
    assert parse_mqtt_url("mqtt://h").port == 1883 and parse_mqtt_url("mqtt://h").prefix == "dymn-edge"
    assert parse_mqtt_url("mqtt://h?discovery=none").discovery is None
    for bad, msg in [("http://h", "must start with mqtt://"), ("mqtt://h?color=red", "unknown option"),
                     ("mqtt://h:99999", "bad port"), ("mqtt://h?qos=3", "qos must be"),
                     ("mqtt://h/a/#", "wildcards"), ("mqtt://h/a/+/b", "wildcards"),
                     ("mqtts://h?ca=/missing/ca.crt", "CA file not found"), ("mqtt://h?ca=/etc/hostname", "needs an mqtts")]:
        with pytest.raises(MqttError, match=msg):
            parse_mqtt_url(bad)
    # the password of a user without one in the URL comes from the environment (a unit's EnvironmentFile)
    assert parse_mqtt_url("mqtt://pi@h", {PASSWORD_ENV: "p:w"}).password == "p:w"
    assert parse_mqtt_url("mqtt://pi:url@h", {PASSWORD_ENV: "p:w"}).password == "url"
    assert parse_mqtt_url("mqtt://h", {PASSWORD_ENV: "p:w"}).password is None  # no user, no password


def test_events_availability_and_discovery(broker: Broker) -> None:
    sub = Subscriber(broker.port)
    pub = _publisher(broker.url + "/t?node=kitchen", watched=[0, 3])
    try:
        assert sub.wait_for(lambda: sub.on("t/kitchen/availability")[-1:] == [b"online"])
        pub.event(_ev("start", 3, 1.0))
        pub.event(_ev("end", 3, 1.0, 2.5))
        pub.event(_ev("start", 1, 3.0))  # not watched: event message, no state
        pub.event(_ev("end", 1, 3.0, 3.5))
        assert sub.wait_for(lambda: len(sub.on("t/kitchen/event")) == 4)
    finally:
        counters = pub.close()
    assert sub.wait_for(lambda: sub.on("t/kitchen/availability")[-1:] == [b"offline"])
    sub.close()
    events = [json.loads(p) for p in sub.on("t/kitchen/event")]
    assert [(e["event"], e["label"]) for e in events] == [("start", "Dog bark"), ("end", "Dog bark"),
                                                          ("start", "one"), ("end", "one")]
    assert events[1]["duration_s"] == 1.5 and events[1]["mid"] == "/m/d3" and "end_utc" in events[1]
    assert (events[1]["peak_raw_prob"], events[1]["peak_smoothed_prob"]) == (0.99, 0.9)  # named as such
    assert sub.on("t/kitchen/label/dog_bark/state") == [b"OFF", b"ON", b"OFF"]
    assert sub.on("t/kitchen/label/one/state") == []
    assert json.loads(sub.on("t/kitchen/last_event")[-1])["label"] == "one"
    configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/")}
    assert set(configs) == {"homeassistant/binary_sensor/kitchen/zero/config",
                            "homeassistant/binary_sensor/kitchen/dog_bark/config",
                            "homeassistant/sensor/kitchen/last_event/config"}
    dog = configs["homeassistant/binary_sensor/kitchen/dog_bark/config"]
    assert HA_BINARY_KEYS <= set(dog) and dog["state_topic"] == "t/kitchen/label/dog_bark/state"
    assert dog["availability_topic"] == "t/kitchen/availability" and dog["unique_id"] == "kitchen_dog_bark"
    last = configs["homeassistant/sensor/kitchen/last_event/config"]
    assert HA_SENSOR_KEYS <= set(last) and last["state_topic"] == "t/kitchen/last_event"
    assert dog["device"]["identifiers"] == last["device"]["identifiers"]
    assert counters == {"mqtt_sent": 4, "mqtt_queued": 0, "mqtt_dropped": 0, "mqtt_unsent": 0,
                        "mqtt_reconnects": 0}
    # retained: a new subscriber sees availability and discovery without any new publish
    late = Subscriber(broker.port, client_id="late")
    assert late.wait_for(lambda: late.on("t/kitchen/availability") == [b"offline"])
    assert late.wait_for(lambda: len([t for t, _, r in late.messages if t.startswith("homeassistant/") and r]) == 3)
    late.close()


def test_broker_down_at_start_queues_then_delivers_and_counts_drops(tmp_path: Path) -> None:
    b = Broker(tmp_path / "broker")
    b.start()
    sub = Subscriber(b.port)  # a durable session, kept by the broker across its restart
    b.stop()
    pub = _publisher(b.url + "/q?node=n1&queue=4&discovery=none")  # the broker is down
    try:
        for k in range(3):  # 2 messages each (event + last_event): the 3rd event's are refused
            pub.event(_ev("start", k, float(k)))
        assert pub.queued == 2 and pub.dropped == 1
        b.start()
        assert sub.wait_for(lambda: pub.connected, timeout=20)
        pub.event(_ev("end", 0, 0.0, 1.0))  # sent live once connected
        assert sub.wait_for(lambda: len(set(sub.on("q/n1/event"))) == 3)
        got = [(e["event"], e["label"]) for e in map(json.loads, dict.fromkeys(sub.on("q/n1/event")))]
        assert got == [("start", "zero"), ("start", "one"), ("end", "zero")]  # the refused one is lost
    finally:
        counters = pub.close()
        sub.close()
        b.stop()
    assert counters["mqtt_queued"] == 2 and counters["mqtt_dropped"] == 1
    assert counters["mqtt_sent"] == 3 and counters["mqtt_unsent"] == 0


def test_missing_broker_at_stop_counts_unsent(tmp_path: Path) -> None:
    pub = _publisher(f"mqtt://127.0.0.1:{_free_port()}/x?discovery=none")
    pub.event(_ev("start", 0, 0.0))
    counters = pub.close()  # returns at once: nothing to wait for while offline
    assert counters["mqtt_queued"] == 1 and counters["mqtt_unsent"] == 1 and counters["mqtt_sent"] == 0


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if not exe:
        msg = "openssl not installed (apt-get install openssl; .ci/run installs it)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-1000:]


def _mosquitto_passwd_bin() -> str:
    """mosquitto_passwd: skipped like the broker when missing (some distributions package it
    apart from mosquitto), failed under CI."""
    path = shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd") if Path(p).is_file()), None)
    if not path:
        msg = "mosquitto_passwd not installed (apt-get install mosquitto; .ci/run installs it)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def test_tls_and_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """mqtts:// with a private CA and a password with URL-escaped characters; a wrong
    password is refused by the broker, logged once, and tagging (publishing) goes on."""
    passwd_bin = _mosquitto_passwd_bin()
    d = tmp_path / "tls"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=dymn-edge test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "srv.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    pw = subprocess.run([passwd_bin, "-b", "-c",
                         str(d / "passwd"), "pi", "s3cret:@/x"], capture_output=True, text=True, timeout=30)
    assert pw.returncode == 0, pw.stderr
    b = Broker(tmp_path / "broker", anonymous=False,
               extra=f"cafile {d}/ca.crt\ncertfile {d}/srv.crt\nkeyfile {d}/srv.key\npassword_file {d}/passwd\n")
    b.start()
    sub = Subscriber(b.port, ca=d / "ca.crt", auth=("pi", "s3cret:@/x"))
    url = f"mqtts://pi:s3cret%3A%40%2Fx@127.0.0.1:{b.port}/s?node=n&discovery=none&ca={d}/ca.crt"
    pub = _publisher(url)
    bad = _publisher(f"mqtts://pi:wrong@127.0.0.1:{b.port}/s?node=bad&discovery=none&ca={d}/ca.crt")
    from_env = MqttPublisher(parse_mqtt_url(f"mqtts://pi@127.0.0.1:{b.port}/s?node=env&discovery=none&ca={d}/ca.crt",
                                            {PASSWORD_ENV: "s3cret:@/x"}), LABELS)
    (d / "not-a-ca.crt").write_text("no certificate here\n")
    with pytest.raises(MqttError, match="TLS setup failed"):
        _publisher(f"mqtts://127.0.0.1:{b.port}?ca={d}/not-a-ca.crt")
    try:
        assert sub.wait_for(lambda: pub.connected and from_env.connected, timeout=20)
        pub.event(_ev("start", 2, 1.0))
        assert sub.wait_for(lambda: len(sub.on("s/n/event")) == 1)
        assert json.loads(sub.on("s/n/event")[0])["label"] == "two"
        with caplog.at_level(logging.WARNING, logger="dymn_edge.runtime.device.mqtt"):
            # a few refused attempts of the bad publisher (backoff 1 s, 2 s): the broker logs each
            assert sub.wait_for(lambda: _refusals(b) >= 2, timeout=20), (b.dir / "broker.log").read_text()[-1500:]
            bad.event(_ev("start", 0, 0.0))
    finally:
        counters = pub.close()
        bad_counters = bad.close()
        from_env.close()
        sub.close()
        b.stop()
    assert counters["mqtt_sent"] == 1 and counters["mqtt_unsent"] == 0
    refused = [r.message for r in caplog.records if "127.0.0.1" in r.message and "unavailable" in r.message]
    assert len(refused) == 1 and "refused" in refused[0], refused  # said once
    assert not bad.connected and bad_counters["mqtt_queued"] == 1 and bad_counters["mqtt_unsent"] == 1
