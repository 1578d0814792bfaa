"""The web dashboard's server (runtime/device/web.py) on a real aiohttp server on a free
loopback port: JSON API (history, keyset paging, filters), token and cookie, clips served
from inside the clips folder only, spectrogram PNGs, server-sent live state, read-only
access beside a writer, a 10^6-event log answered through its indexes, ``dymn-events
serve`` and the ``--web`` options of dymn-listen."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from conftest import in_ci

try:
    import aiohttp  # noqa: F401 (the [web] extra)
except ImportError:
    if in_ci():  # CI installs the test extra: a missing server is a failure there
        raise
    pytest.skip("the [web] extra (aiohttp) is not installed", allow_module_level=True)

from dymn_edge.labels import Label  # noqa: E402
from dymn_edge.runtime.device.eventlog import EventLog, utc_iso  # noqa: E402
from dymn_edge.runtime.device.options import WebError, parse_web_address, web_token  # noqa: E402
from dymn_edge.runtime.device.web import (  # noqa: E402
    EventStore, Filters, LiveState, WebServer, png_bytes, resolve_clip, spectrogram_png,
)
from dymn_edge.runtime.events import Event, EventConfig, EventTracker  # noqa: E402
from dymn_edge.runtime.microphone import ListenStats  # noqa: E402
from dymn_edge.runtime.tagger import WindowScores  # noqa: E402

LABELS = [Label(0, "/m/dog", "Dog"), Label(1, "/m/cat", "Cat"), Label(2, None, "Bird song")]
T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
TOKEN = "s3cret-token-42"


def _tone(path: Path, freq: float, seconds: float = 1.0, sr: int = 32000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="FLAC", subtype="PCM_16")
    return path


def _write_log(db: Path, n: int, clips: Path | None = None, step_s: float = 600.0) -> list[dict[str, Any]]:
    """``n`` events, one every ``step_s`` seconds, labels in turn, peak raw 0.50..0.99; with
    ``clips`` every event gets a real FLAC clip there. Returns what was written."""
    log = EventLog(db, device="test mic", model_sha256="ab" * 32)
    out = []
    for i in range(n):
        lab = LABELS[i % 3]
        t = T0 + i * step_s
        clip = None
        if clips is not None:
            clip = str(_tone(clips / utc_iso(t)[:10] / f"{utc_iso(t)[:19].replace('-', '').replace(':', '')}"
                             f".000Z_{lab.display_name.replace(' ', '_')}.flac", 300.0 + 100 * lab.index))
        peak = 0.5 + 0.49 * (i % 50) / 49
        ev = Event("end", lab, 10.0 * i, 10.0 * i + 1.0, peak * 0.9, mean=peak * 0.8, peak_raw=peak,
                   start_utc=t, end_utc=t + 1.0, clip=clip)
        log.event(ev)
        out.append({"label": lab.display_name, "start_utc": utc_iso(t), "peak_raw_prob": peak, "clip": clip})
    log.close()
    return out


class Client:
    """Plain HTTP against the server (stdlib: what a script or curl would do)."""

    def __init__(self, server: WebServer, token: str | None = None) -> None:
        self.base = server.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                raw_body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
        h = dict(self.headers, **(headers or {}))
        if data is not None and "Content-Type" not in h:
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=h, method=method)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _, data = self.request(method, path, body)
        assert status == 200, (status, data[:300])
        return json.loads(data)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture()
def served(tmp_path: Path):
    """A server over a 120-event log with clips; stopped at the end."""
    db, clips = tmp_path / "events.db", tmp_path / "clips"
    rows = _write_log(db, 120, clips=None)
    servers: list[WebServer] = []

    def start(**kw: Any) -> WebServer:
        s = WebServer(db=kw.pop("db", db), clips=kw.pop("clips", clips), port=0, **kw)
        s.start()
        servers.append(s)
        return s

    yield start, rows, db, clips
    for s in servers:
        s.stop()


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("8080", ("127.0.0.1", 8080)), (":9000", ("127.0.0.1", 9000)),
                                           ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:8080", ("::1", 8080)),
                                           ("pi.local:0", ("pi.local", 0))])
def test_parse_web_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_web_address(text) == expected


@pytest.mark.parametrize("text", ["", "http", "70000", "::1:80", "[::1]80", "host:", "a b:80", "-1"])
def test_parse_web_address_refuses(text: str) -> None:
    with pytest.raises(WebError):
        parse_web_address(text)


def test_web_token_rules() -> None:
    assert web_token(None, {}) is None
    assert web_token(None, {"DYMN_EDGE_WEB_TOKEN": TOKEN}) == TOKEN
    assert web_token("cli-token-123", {"DYMN_EDGE_WEB_TOKEN": TOKEN}) == "cli-token-123"
    for bad in ("short", "has blank inside"):
        with pytest.raises(WebError, match="at least 8"):
            web_token(bad, {})


# -- PNG, spectrogram, clip paths ------------------------------------------------------------


def _decode_png(data: bytes) -> np.ndarray:
    """A decoder for what png_bytes writes (8-bit RGB, filter 0): checks every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, ctype) == (8, 2) and b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_bytes_round_trip() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 13, 3), dtype=np.uint8)
    assert np.array_equal(_decode_png(png_bytes(img)), img)
    with pytest.raises(ValueError):
        png_bytes(img.astype(np.float32))


def test_spectrogram_shows_the_tone(tmp_path: Path) -> None:
    clip = _tone(tmp_path / "a.flac", 4000.0, seconds=2.0)
    img = _decode_png(spectrogram_png(clip, height=256))
    assert img.shape[0] == 256 and 100 <= img.shape[1] <= 1200
    brightness = img.astype(float).sum(axis=(1, 2))
    row = int(np.argmax(brightness))  # top row = 16 kHz, bottom = 0 Hz
    freq = (255 - row) / 255 * 16000
    assert abs(freq - 4000) < 200, freq


def test_resolve_clip_stays_inside(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    inside = _tone(clips / "2026-05-28" / "x.flac", 440)
    outside = _tone(tmp_path / "secret.flac", 440)
    (clips / "2026-05-28" / "link.flac").symlink_to(outside)
    assert resolve_clip(clips, str(inside)) == inside.resolve()
    assert resolve_clip(clips, "2026-05-28/x.flac") == inside.resolve()
    # moved folder: the stored absolute path is found by its day folder and name
    assert resolve_clip(clips, "/old/place/2026-05-28/x.flac") == inside.resolve()
    for bad in (str(outside), "../secret.flac", "2026-05-28/../../secret.flac", "2026-05-28/link.flac",
                "/etc/passwd", "", None, str(clips / "2026-05-28")):
        assert resolve_clip(clips, bad) is None, bad


# -- the API ---------------------------------------------------------------------------------


def test_history_per_hour_and_day(served) -> None:
    start, rows, _, _ = served
    c = Client(start())
    day = c.json("POST", "/api/history", {"bucket": "day"})
    expected: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["start_utc"][:10], r["label"])
        expected[key] = expected.get(key, 0) + 1
    assert {(x["bucket"], x["label"]): x["events"] for x in day["rows"]} == expected
    assert [x["bucket"] for x in day["rows"]] == sorted(x["bucket"] for x in day["rows"])
    hour = c.json("POST", "/api/history", {"bucket": "hour", "labels": ["Cat"], "min_prob": 0.9})
    want = [r for r in rows if r["label"] == "Cat" and r["peak_raw_prob"] >= 0.9]
    assert sum(x["events"] for x in hour["rows"]) == len(want) > 0
    assert all(x["bucket"].endswith(":00Z") and len(x["bucket"]) == 17 for x in hour["rows"])
    assert hour["labels"] == ["Cat"]


def test_paging_walks_every_event_once_newest_first(served) -> None:
    start, rows, _, _ = served
    c = Client(start())
    seen, body = [], {"limit": 7}
    while True:
        page = c.json("POST", "/api/events", body)
        seen += page["events"]
        if not page["more_older"]:
            break
        last = page["events"][-1]
        body = {"limit": 7, "before": [last["start_utc"], last["id"]]}
    assert [r["start_utc"] for r in seen] == sorted((r["start_utc"] for r in rows), reverse=True)
    assert len({r["id"] for r in seen}) == len(rows)
    # and back up: the page above the last one is the one before it
    last_page = c.json("POST", "/api/events", body)
    up = c.json("POST", "/api/events", {"limit": 7, "after": [last_page["events"][0]["start_utc"],
                                                               last_page["events"][0]["id"]]})
    assert [r["id"] for r in up["events"]] == [r["id"] for r in seen[-len(last_page["events"]) - 7:-len(last_page["events"])]]
    assert up["more_newer"] is True
    first = c.json("POST", "/api/events", {"limit": 5})
    assert first["more_newer"] is False and first["more_older"] is True
    assert {"model_sha256", "peak_raw_prob", "peak_smoothed_prob", "mean_prob", "clip"} <= set(first["events"][0])


def test_filters(served) -> None:
    start, rows, _, _ = served
    c = Client(start())
    since, until = rows[10]["start_utc"], rows[40]["start_utc"]
    page = c.json("POST", "/api/events", {"limit": 500, "labels": ["Dog", "Bird song"], "since": since,
                                          "until": until, "min_prob": 0.7})
    want = [r for r in rows if r["label"] in ("Dog", "Bird song") and since <= r["start_utc"] < until
            and r["peak_raw_prob"] >= 0.7]
    assert [r["start_utc"] for r in page["events"]] == sorted((r["start_utc"] for r in want), reverse=True)
    assert want and page["more_older"] is False
    # an offset time is read as the same instant in UTC
    local = c.json("POST", "/api/events", {"limit": 500, "since": since.replace("Z", "").replace("T", " ")[:19] + "+00:00"})
    assert len(local["events"]) == len([r for r in rows if r["start_utc"] >= since])
    labels = c.json("GET", "/api/labels")["labels"]
    assert labels == [{"label": lab, "events": 40} for lab in ("Bird song", "Cat", "Dog")]


@pytest.mark.parametrize("body,phrase", [
    ({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"limit": "5"}, "limit"), ({"min_prob": 2}, "min_prob"),
    ({"since": "yesterday"}, "since"), ({"labels": [1]}, "labels"), ({"before": ["x"]}, "before"),
    ({"before": ["a", 1], "after": ["b", 2]}, "not both"), ([1, 2], "object")])
def test_bad_queries_are_400(served, body: Any, phrase: str) -> None:
    start, _, _, _ = served
    status, _, data = Client(start()).request("POST", "/api/events", body)
    assert status == 400 and phrase in json.loads(data)["error"]


def test_bad_json_and_bucket(served) -> None:
    start, _, _, _ = served
    c = Client(start())
    status, _, data = c.request("POST", "/api/history", raw_body=b"{not json")
    assert status == 400 and "JSON" in json.loads(data)["error"]
    status, _, _ = c.request("POST", "/api/history", {"bucket": "week"})
    assert status == 400


def test_schema_1_log_is_served_read_only(tmp_path: Path) -> None:
    """A log of the first schema (no raw peak, the smoothed one named peak_prob) is read as
    dymn-events reads it, and left as it is."""
    from .test_device_parts import _SCHEMA_1

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.executescript(_SCHEMA_1)
    server = WebServer(db=db, clips=None, port=0)
    server.start()
    try:
        c = Client(server)
        row = c.json("POST", "/api/events", {"limit": 5})["events"][0]
        assert (row["label"], row["peak_raw_prob"], row["peak_smoothed_prob"], row["mean_prob"]) == ("Dog", None, 0.7, 0.6)
        assert len(c.json("POST", "/api/events", {"min_prob": 0.65})["events"]) == 1  # its smoothed peak
        assert c.json("POST", "/api/events", {"min_prob": 0.75})["events"] == []
        assert c.json("GET", "/api/events/1")["peak_smoothed_prob"] == 0.7
    finally:
        server.stop()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version FROM schema_version").fetchall() == [(1,)]


# -- security --------------------------------------------------------------------------------


def test_token_header_and_login_cookie(served) -> None:
    start, _, _, _ = served
    server = start(token=TOKEN)
    anon = Client(server)
    for method, path in (("GET", "/api/info"), ("POST", "/api/events"), ("GET", "/api/live"),
                         ("GET", "/api/clip/1"), ("GET", "/static/app.js"), ("GET", "/clips/x.flac")):
        status, headers, data = anon.request(method, path, {} if method == "POST" else None)
        assert status == 401, (path, status)
        assert "token" in json.loads(data)["error"] and headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = anon.request("GET", "/")
    assert status == 302 and headers["Location"] == "/login"
    status, _, page = anon.request("GET", "/login")
    assert status == 200 and b'name="token"' in page and b'method="post"' in page
    assert anon.request("GET", "/static/style.css")[0] == 200  # the login page's style
    assert Client(server, "wrong-token-000").request("GET", "/api/info")[0] == 401
    assert Client(server, TOKEN).json("GET", "/api/info")["auth"] is True
    # the form: a wrong token is 403 with a message, the right one sets an HttpOnly SameSite cookie
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, page = anon.request("POST", "/login", headers=form, raw_body=b"token=nope-nope-nope")
    assert status == 403 and b"Wrong token" in page
    status, headers, _ = anon.request("POST", "/login", headers=form,
                                      raw_body=urllib.parse.urlencode({"token": TOKEN}).encode())
    assert status == 302 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    status, _, data = anon.request("GET", "/api/info", headers={"Cookie": value})
    assert status == 200 and json.loads(data)["db"] is True
    assert anon.request("GET", "/api/info", headers={"Cookie": value[:-1] + "0"})[0] == 401


def test_loopback_answers_loopback_host_names_only(served) -> None:
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    start, _, _, _ = served
    server = start()
    c = Client(server)
    for host in (f"evil.example:{server.port}", "192.168.1.10", f"127.0.0.1.evil.example:{server.port}"):
        status, _, data = c.request("GET", "/api/info", headers={"Host": host})
        assert status == 421 and "loopback" in json.loads(data)["error"], host
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "localhost"):
        status, headers, _ = c.request("GET", "/api/info", headers={"Host": host})
        assert status == 200 and headers["Server"] == "dymn-edge", host


def test_clip_served_from_the_folder_only(tmp_path: Path) -> None:
    db, clips = tmp_path / "events.db", tmp_path / "clips"
    good = _tone(clips / "2026-05-28" / "20260528T202640.000Z_Dog.flac", 440.0)
    secret = tmp_path / "secret.flac"
    shutil.copy(good, secret)
    (clips / "2026-05-28" / "20260528T202641.000Z_Cat.flac").symlink_to(secret)
    log = EventLog(db)
    for i, clip in enumerate([str(good), str(secret), "../secret.flac", "/etc/passwd",
                              str(clips / "2026-05-28" / "20260528T202641.000Z_Cat.flac"), None]):
        log.event(Event("end", LABELS[0], i, i + 1.0, 0.9, 0.8, 0.9, start_utc=T0 + i, end_utc=T0 + i + 1, clip=clip))
    log.close()
    server = WebServer(db=db, clips=clips, port=0)
    server.start()
    try:
        c = Client(server)
        status, headers, data = c.request("GET", "/api/clip/1")
        assert status == 200 and headers["Content-Type"] == "audio/flac" and data == good.read_bytes()
        status, headers, part = c.request("GET", "/api/clip/1", headers={"Range": "bytes=0-99"})
        assert status == 206 and part == good.read_bytes()[:100]  # seeking in the browser
        for event_id in (2, 3, 4, 5, 6, 999):
            status, _, data = c.request("GET", f"/api/clip/{event_id}")
            assert status == 404 and data != secret.read_bytes(), event_id
            assert c.request("GET", f"/api/spectrogram/{event_id}")[0] == 404
        assert c.json("GET", "/api/events/1")["clip_available"] is True
        assert c.json("GET", "/api/events/3")["clip_available"] is False
        # the path route, with encoded dots and slashes a browser would not normalise
        status, headers, data = c.request("GET", "/clips/2026-05-28/20260528T202640.000Z_Dog.flac")
        assert status == 200 and headers["Content-Type"] == "audio/flac"
        host, port = server.host, server.port
        for raw in ("/clips/..%2fsecret.flac", "/clips/%2e%2e/secret.flac", "/clips/2026-05-28/%2e%2e/%2e%2e/secret.flac",
                    "/clips/%2Fetc%2Fpasswd", "/clips/2026-05-28/20260528T202641.000Z_Cat.flac",
                    "/clips/../secret.flac", "/clips/", "/static/..%2f..%2feventlog.py"):
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", raw)  # sent as is (urllib would normalise "..")
            r = conn.getresponse()
            body = r.read()
            conn.close()
            assert r.status in (403, 404), (raw, r.status)
            assert body != secret.read_bytes() and b"import" not in body, raw
    finally:
        server.stop()


def test_spectrogram_cached_beside_the_clip(tmp_path: Path) -> None:
    db, clips = tmp_path / "events.db", tmp_path / "clips"
    rows = _write_log(db, 3, clips=clips)
    server = WebServer(db=db, clips=clips, port=0)
    server.start()
    try:
        c = Client(server)
        status, headers, png = c.request("GET", "/api/spectrogram/2")
        assert status == 200 and headers["Content-Type"] == "image/png"
        cached = Path(rows[1]["clip"]).with_suffix(".png")
        assert cached.read_bytes() == png and _decode_png(png).shape[0] == 256
        stamp = cached.stat().st_mtime_ns
        assert c.request("GET", "/api/spectrogram/2")[2] == png and cached.stat().st_mtime_ns == stamp  # from the cache
        assert not any(p.name.endswith(".part") for p in clips.rglob("*"))
    finally:
        server.stop()


def test_index_and_static_carry_no_cdn(served) -> None:
    start, _, _, _ = served
    c = Client(start())
    status, headers, page = c.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, data = c.request("GET", f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(ctype)
        assert b"http://" not in data and b"https://" not in data, name  # nothing fetched from elsewhere
    assert b"https://" not in page and b"http://" not in page
    assert c.request("GET", "/static/nope.js")[0] == 404


# -- live ------------------------------------------------------------------------------------


class _LiveStream:
    """One open ``/api/live`` stream; ``until(pred)`` reads data messages (keep-alives skipped)
    until one satisfies ``pred``, within an overall deadline (keep-alives every 15 s would
    otherwise keep a socket timeout from ever firing)."""

    def __init__(self, server: WebServer, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
        self.conn.request("GET", "/api/live")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200 and self.resp.getheader("Content-Type") == "text/event-stream"

    def until(self, pred: Any = lambda m: True) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            line = self.resp.fp.readline()
            assert line, "stream ended"
            if line.startswith(b"data: "):
                msg = json.loads(line[6:])
                if pred(msg):
                    return msg
        raise AssertionError(f"no live message as expected within {self.timeout:g} s")

    def close(self) -> None:
        self.conn.close()


def test_live_state_pushed_to_clients(tmp_path: Path) -> None:
    """The listener's hop copies into LiveState; every client gets the top tags, level and
    counters computed on the server's thread."""
    db = tmp_path / "events.db"
    _write_log(db, 2)
    tracker = EventTracker(LABELS, EventConfig(on=0.5, off=0.3, min_level_dbfs=-60.0), hop_s=0.25)
    live = LiveState(LABELS, info={"engine": "onnxruntime", "model": "m.onnx", "window_s": 1.0, "hop_s": 0.25},
                     tracker=tracker)
    stats = ListenStats(device="0: test mic")
    on_hop = live.chain(None)
    server = WebServer(db=db, clips=None, port=0, live=live)
    server.start()
    stream = None
    try:
        stream = _LiveStream(server)  # open before the hops: what follows is pushed, not polled
        first = stream.until()
        assert first["live"] is True and first["tags"] == [] and first["last_id"] in (None, 2)
        probs = np.array([0.1, 0.85, 0.05], np.float32)
        for k in range(4):
            stats.hops_run += 1
            stats.audio_seconds = 0.25 * (k + 1)
            stats.overflows = 3
            events = tracker.update(0.25 * (k + 1), probs, -20.0)
            on_hop(WindowScores(0.25 * k, 0.25 * k + 1.0, probs), events, stats)
        m = stream.until(lambda msg: msg.get("hops") == 4 and msg.get("last_id") == 2)
        assert [t["label"] for t in m["tags"]] == ["Cat", "Dog", "Bird song"]
        assert m["tags"][0]["probability"] == pytest.approx(0.85)
        assert m["level_dbfs"] == -20.0 and m["overflows"] == 3 and m["hops"] == 4 and m["device"] == "0: test mic"
        assert m["engine"] == "onnxruntime" and m["window_s"] == 1.0 and m["last_id"] == 2
        assert [(e["event"], e["label"]) for e in m["events"]] == [("start", "Cat")]
        # a quiet window: gated, no tags
        tracker.update(2.0, probs, -90.0)
        on_hop(WindowScores(1.0, 2.0, probs), [], stats)
        m = stream.until(lambda msg: msg.get("below_level_floor") is True)
        assert m["tags"] == [] and m["below_level_floor"] is True
        late = _LiveStream(server)  # a client that connects now gets the current state at once
        assert late.until().get("below_level_floor") is True
        late.close()
        assert server.sse_clients_max >= 1
    finally:
        if stream is not None:
            stream.close()
        server.stop()


def test_live_hop_never_raises() -> None:
    live = LiveState(LABELS, info={})
    live.hop(object(), [], object())  # broken input: logged once, the listener goes on
    assert live.seq == 0 and live.snapshot()["tags"] == []


# -- the log under a writer, at scale --------------------------------------------------------


def test_readers_never_block_the_writer(tmp_path: Path) -> None:
    """A writer that would fail at once on a lock (timeout 0) inserts while the server reads."""
    db = tmp_path / "events.db"
    _write_log(db, 50)
    server = WebServer(db=db, clips=None, port=0)
    server.start()
    writer = sqlite3.connect(str(db), timeout=0, isolation_level=None)
    try:
        c = Client(server)
        for i in range(100):
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO events (label, label_index, start_utc, end_utc, start_s, end_s, duration_s, "
                           "peak_smoothed_prob, recorded_utc) VALUES ('Dog', 0, ?, ?, 0, 1, 1, 0.9, ?)",
                           (utc_iso(T0 + 10**6 + i), utc_iso(T0 + 10**6 + i + 1), utc_iso(T0)))
            writer.execute("COMMIT")
            if i % 10 == 0:
                assert c.json("POST", "/api/history", {"bucket": "day"})["rows"]
                c.json("POST", "/api/events", {"limit": 50})
        assert c.json("POST", "/api/events", {"limit": 1})["events"][0]["start_utc"] == utc_iso(T0 + 10**6 + 99)
        # and the server cannot write
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            server.store.conn().execute("DELETE FROM events")
    finally:
        writer.close()
        server.stop()


def _million(db: Path, n: int) -> None:
    """``n`` events over a year, written in bulk into a file EventLog created (its schema and indexes)."""
    EventLog(db).close()
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    names = [f"label {k}" for k in range(20)]
    step = 365 * 86400 / n
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (label, label_index, start_utc, end_utc, start_s, end_s, duration_s, peak_raw_prob, "
        "peak_smoothed_prob, mean_prob, recorded_utc) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        ((names[i % 20], i % 20, utc_iso(T0 + i * step), utc_iso(T0 + i * step + 1), i, i + 1, 1.0,
          0.5 + (i % 50) / 100, 0.5, 0.5, utc_iso(T0)) for i in range(n)))
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.parametrize("n", [10**5, pytest.param(10**6, marks=pytest.mark.slow)])
def test_many_events_answer_through_the_indexes(tmp_path: Path, n: int) -> None:
    """10^6 events (a year of a busy device; writing them takes ~30 s, so that case is slow,
    10^5 runs always): the chart's default range, the first and a deep page and a label's
    page are answered, and each query plan uses an index (no scan of the table, no sort of
    it); timings are printed, not asserted."""
    db = tmp_path / "events.db"
    t = time.perf_counter()
    _million(db, n)
    print(f"\n{n} events written in {time.perf_counter() - t:.1f} s")
    store = EventStore(db)
    end = utc_iso(T0 + 365 * 86400)
    week = utc_iso(T0 + 358 * 86400)
    cases = {
        "history 7 d per hour": lambda: store.history_sql(Filters(since=week), "hour"),
        "history 7 d per hour, one label": lambda: store.history_sql(Filters(since=week, labels=("label 3",)), "hour"),
        "first page": lambda: store.page_sql(Filters(), 50, None, None),
        "deep page": lambda: store.page_sql(Filters(), 50, (utc_iso(T0 + 30 * 86400), 1), None),
        "page, min prob and range": lambda: store.page_sql(Filters(min_prob=0.9, since=week, until=end), 50, None, None),
    }
    for name, make in cases.items():
        sql, args = make()
        plan = " | ".join(r[3] for r in store.conn().execute("EXPLAIN QUERY PLAN " + sql, args))
        # an index narrows every query (the time range's, or the label's); a page is read in
        # index order: no sort of the matching rows
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (name, plan)
        assert "label" in name or "events_start" in plan, (name, plan)
        assert "page" not in name or "TEMP B-TREE" not in plan, (name, plan)
        t = time.perf_counter()
        rows = store.conn().execute(sql, args).fetchall()
        print(f"{name}: {len(rows)} rows in {1e3 * (time.perf_counter() - t):.1f} ms ({plan})")
        assert rows
    t = time.perf_counter()
    labels = store.labels()
    print(f"labels: {len(labels)} in {1e3 * (time.perf_counter() - t):.1f} ms")
    assert sum(x["events"] for x in labels) == n
    t = time.perf_counter()
    page = store.page(Filters(labels=("label 7",)), 50)
    print(f"first page of one label: {1e3 * (time.perf_counter() - t):.1f} ms")
    assert len(page["events"]) == 50 and all(r["label"] == "label 7" for r in page["events"])
    store.close()
    # what the page asks for when it opens, over HTTP
    server = WebServer(db=db, clips=None, port=0)
    server.start()
    try:
        c = Client(server)
        t = time.perf_counter()
        hist = c.json("POST", "/api/history", {"bucket": "hour", "since": week})
        first = c.json("POST", "/api/events", {"limit": 50})
        names = c.json("GET", "/api/labels")["labels"]
        print(f"page open over HTTP (history, first page, labels): {1e3 * (time.perf_counter() - t):.0f} ms")
        assert hist["rows"] and len(first["events"]) == 50 and first["more_older"] and len(names) == 20
    finally:
        server.stop()


# -- the command lines -----------------------------------------------------------------------


def _tool(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from dymn_edge.runtime.device.events_cli import main; sys.exit(main())",
            *args]


def test_dymn_events_serve(tmp_path: Path) -> None:
    db, clips = tmp_path / "events.db", tmp_path / "clips"
    _write_log(db, 6, clips=clips)
    env_file = tmp_path / "web.env"
    env_file.write_text(f"DYMN_EDGE_WEB_TOKEN={TOKEN}\n")
    env_file.chmod(0o600)
    proc = subprocess.Popen(_tool("serve", "--db", str(db), "--clips", str(clips), "--web", "127.0.0.1:0",
                                  "--env-file", str(env_file)), stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "dashboard of" in line and "http://127.0.0.1:" in line, line
        url = line.split(" on ")[1].split()[0]
        req = urllib.request.Request(url + "api/events", data=b"{}", headers={"Authorization": f"Bearer {TOKEN}",
                                                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert len(json.loads(r.read())["events"]) == 6
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "api/info", timeout=10)
        assert e.value.code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert TOKEN not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    # the plain listing still works
    out = subprocess.run(_tool(str(db), "--format", "jsonl"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 6


@pytest.mark.parametrize("argv,phrase", [
    (["--web", "99999"], "port 0-65535"), (["--web-token", "short"], "at least 8"),
    (["--clips", "NOPE"], "not a folder"), ([], None)])
def test_dymn_events_serve_bad_input_is_one_line(tmp_path: Path, argv: list[str], phrase: str | None) -> None:
    db = tmp_path / "events.db"
    _write_log(db, 1)
    if phrase is None:  # the port is taken: one line, exit 2
        blocker = WebServer(db=db, clips=None, port=0)
        blocker.start()
        argv, phrase = ["--web", f"127.0.0.1:{blocker.port}"], "cannot serve"
    else:
        blocker = None
    try:
        out = subprocess.run(_tool("serve", "--db", str(db), *[a.replace("NOPE", str(tmp_path / "nope")) for a in argv]),
                             capture_output=True, text=True, timeout=60)
    finally:
        if blocker is not None:
            blocker.stop()
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and phrase in err[0], out.stderr


def test_listen_web_options_and_unit(fsdd_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    """--web goes into the systemd unit; the token never does (it comes from --env-file)."""
    from dymn_edge.runtime.cli import listen_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DYMN_EDGE_WEB_TOKEN", raising=False)
    shutil.copy(fsdd_onnx, tmp_path / "m.onnx")
    env = tmp_path / "web.env"
    env.write_text(f"DYMN_EDGE_WEB_TOKEN={TOKEN}\n")
    env.chmod(0o600)
    argv = ["--model", "m.onnx", "--db", "e.db", "--web", "0.0.0.0:8080", "--env-file", "web.env", "--print-systemd-unit"]
    assert listen_main(argv) == 0, capsys.readouterr().err
    unit = capsys.readouterr().out
    exec_line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    assert "--web 0.0.0.0:8080" in exec_line and TOKEN not in unit and f"EnvironmentFile={env}" in unit
    for bad, phrase in ((["--web-token", TOKEN], "shown to every user"), (["--web", "x:y"], "port 0-65535")):
        assert listen_main(["--model", "m.onnx", "--web", "8080", *bad, "--print-systemd-unit"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and phrase in err[0], err
    assert listen_main(["--model", "m.onnx", "--web-token", TOKEN, "--print-systemd-unit"]) == 2
    assert "needs --web" in capsys.readouterr().err
    assert not (tmp_path / "e.db").exists()


def test_web_module_needs_no_torch() -> None:
    code = ("import sys, dymn_edge.runtime.device.web; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'sounddevice')]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr[-800:]
