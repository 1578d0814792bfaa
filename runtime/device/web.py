"""The web dashboard (``dymn-listen --web``, ``dymn-events serve``): live tags, the event
history and each event's clip, from the same SQLite log and clips folder (no new state).

Why it is built this way:

- The server runs on its own thread with its own asyncio loop: the listener's inference
  thread only copies the last scores into :class:`LiveState` (a few microseconds per hop)
  and never waits on a client. A broadcaster task on the server loop turns that state into
  one JSON message a few times a second and fans it out to every ``/api/live`` client
  (server-sent events), so 100 clients cost the listener nothing more than one.
- The database is opened read-only (``mode=ro``), one connection per worker thread: WAL
  readers never block the writer. Queries run on a small thread pool, not on the loop.
- Binds to 127.0.0.1 unless a host is given. With a token, every route but the login
  page needs it: ``Authorization: Bearer TOKEN`` or the session cookie set by the login
  form (HttpOnly, SameSite=Strict; it holds an HMAC of the token, not the token). Queries
  go in POST bodies and clips are named by event id, so no token or event data ends up in
  URLs (proxy / access logs); aiohttp's access log is off. Bound to a loopback address, it
  answers only requests naming a loopback host (``Host: 127.0.0.1 / localhost / [::1]``), so a
  web page elsewhere cannot read it through DNS rebinding.
- A clip is served only from inside the clips folder (resolved paths; ``..``, absolute
  paths and symlinks out of it are refused), as ``audio/flac`` with range requests. Its
  spectrogram is drawn here with numpy and written as a PNG by a small encoder (zlib),
  cached beside the clip when the folder is writable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import web

from dymn_edge.runtime.device.eventlog import COLUMNS, EventLogError, open_readonly, time_and_prob_clauses
from dymn_edge.runtime.device.options import TOKEN_ENV, WebError, is_loopback, parse_web_address

log = logging.getLogger(__name__)

__all__ = ["WebServer", "LiveState", "WebError", "parse_web_address", "png_bytes", "spectrogram_png",
           "resolve_clip", "TOKEN_ENV", "PAGE_SIZE_MAX"]

PAGE_SIZE_MAX = 500
COOKIE = "dymn_session"
#: Seconds between live messages (the page's refresh rate; the listener is never waited on).
LIVE_PERIOD_S = 0.25
#: Seconds between checks of the database for new events (pushed as ``last_id``).
DB_POLL_S = 2.0
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY", "Cache-Control": "no-store",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self'; media-src 'self'; "
                                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'"}


# -- PNG spectrograms -----------------------------------------------------------------------


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of an (H, W, 3) uint8 array (filter 0 on each row, zlib level 6)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"png_bytes takes (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), np.uint8)  # each scanline starts with its filter type (0)
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


#: Colour ramp of the spectrogram, quiet to loud (dark blue, violet, orange, pale yellow).
_RAMP = np.array([[8, 8, 28], [52, 18, 92], [140, 36, 110], [222, 84, 56], [250, 170, 40], [252, 250, 190]],
                 np.float64)


def spectrogram_png(path: str | Path, *, height: int = 256, max_width: int = 1200, range_db: float = 80.0) -> bytes:
    """The log-magnitude spectrogram (0 Hz at the bottom, Nyquist at the top) of an audio file."""
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = audio.mean(axis=1)
    n_fft = 2 * (height - 1)
    hop = max(n_fft // 4, int(math.ceil(len(x) / max_width)))
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft).astype(np.float32), axis=1))  # (frames, height)
    db = 20.0 * np.log10(spec + 1e-9)
    top = float(db.max())
    v = np.clip((db - (top - range_db)) / range_db, 0.0, 1.0).T[::-1]  # (height, frames), low freq last
    pos = v * (len(_RAMP) - 1)
    lo = np.minimum(pos.astype(np.int64), len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    rgb = _RAMP[lo] * (1.0 - frac) + _RAMP[lo + 1] * frac
    return png_bytes(np.round(rgb).astype(np.uint8))


def resolve_clip(root: Path, stored: str | None) -> Path | None:
    """The clip file inside ``root`` for a stored path (absolute as dymn-listen wrote it, or
    relative to the folder), or None when there is none or it lies outside the folder (``..``,
    another folder, a symlink out). A folder moved since recording is found by its last two
    parts (``YYYY-MM-DD/name.flac``)."""
    if not stored:
        return None
    base = root.resolve()
    p = Path(stored)
    candidates = [p] if p.is_absolute() else [base / p]
    if p.is_absolute() and len(p.parts) >= 2:
        candidates.append(base / p.parent.name / p.name)
    for c in candidates:
        try:
            r = c.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if r.is_relative_to(base) and r.is_file() and r.suffix.lower() == ".flac":
            return r
    return None


# -- live state ----------------------------------------------------------------------------


class LiveState:
    """What the running listener is doing now. :meth:`hop` runs on the inference thread and
    only copies; everything else (top tags, JSON) is computed on the server's thread."""

    def __init__(self, labels: Sequence[Any], *, info: dict[str, Any], select: Callable[[np.ndarray], list] | None = None,
                 tracker: Any = None, recent: int = 20) -> None:
        self.labels = list(labels)
        self.info = dict(info)
        self.select = select
        self.tracker = tracker
        self.seq = 0
        self._last: tuple[Any, ...] | None = None
        self.recent = recent
        self.events: tuple[dict[str, Any], ...] = ()  # replaced, never mutated: read from another thread
        self._failed = False

    def hop(self, scores: Any, events: Sequence[Any], stats: Any) -> None:
        """One scored hop (``Listener.run``'s ``on_hop``): copy, never wait."""
        try:
            level = getattr(self.tracker, "level", None)
            gated = bool(getattr(self.tracker, "gated", False))
            self._last = (time.time(), float(scores.start), float(scores.end), np.array(scores.probabilities, np.float32),
                          level, gated, float(stats.audio_seconds), int(stats.hops_run), int(stats.hops_skipped),
                          int(stats.overflows), float(stats.dropped_seconds), float(stats.mean_ms), float(stats.rtf),
                          str(stats.device))
            if events:
                new = tuple({"event": ev.kind, "label": ev.label.display_name, "index": ev.label.index,
                             "start": round(float(ev.start), 3), "end": None if ev.end is None else round(float(ev.end), 3),
                             "probability": round(float(ev.probability), 4), "utc": time.time()} for ev in events)
                self.events = (self.events + new)[-self.recent:]
            self.seq += 1
        except Exception as exc:  # the dashboard must never stop the listener
            if not self._failed:
                self._failed = True
                log.error("web: live state failed (%s: %s); listening goes on", type(exc).__name__, exc)

    def chain(self, inner: Callable[..., None] | None) -> Callable[..., None]:
        """An ``on_hop`` calling ``inner`` (the terminal output) and then :meth:`hop`."""
        def on_hop(scores: Any, events: Any, stats: Any) -> None:
            if inner is not None:
                inner(scores, events, stats)
            self.hop(scores, events, stats)
        return on_hop

    def snapshot(self, top_k: int = 5) -> dict[str, Any]:
        """The JSON of one live message."""
        out: dict[str, Any] = {"live": True, "seq": self.seq, **self.info, "events": list(self.events)}
        last = self._last
        if last is None:
            out["tags"] = []
            return out
        (t, start, end, probs, level, gated, audio_s, hops, skipped, overflows, dropped, mean_ms, rtf,
         device) = last
        if gated:
            sel: list[tuple[int, float]] = []
        elif self.select is not None:
            sel = self.select(probs)
        else:
            order = np.argsort(-probs, kind="stable")
            sel = [(int(i), float(probs[i])) for i in order]
        out.update({
            "time": t, "start": round(start, 3), "end": round(end, 3),
            "tags": [{"label": self.labels[i].display_name, "index": int(i), "probability": round(float(p), 4)}
                     for i, p in sel[:top_k]],
            "level_dbfs": round(level, 1) if level is not None and math.isfinite(level) else None,
            "below_level_floor": gated, "audio_seconds": round(audio_s, 2), "hops": hops, "hops_skipped": skipped,
            "overflows": overflows, "dropped_seconds": round(dropped, 3), "mean_inference_ms": round(mean_ms, 3),
            "rtf": round(rtf, 4), "device": device})
        return out


# -- database queries (worker threads) ------------------------------------------------------


@dataclass
class Filters:
    """The history filters of a request body (checked)."""

    labels: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    min_prob: float | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> "Filters":
        labels = body.get("labels") or ()
        if isinstance(labels, str):
            labels = (labels,)
        if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) and x for x in labels):
            raise ValueError("labels: a list of label names")
        since, until = (_utc_text(body.get(k), k) for k in ("since", "until"))
        mp = body.get("min_prob")
        if mp is not None:
            if not isinstance(mp, (int, float)) or isinstance(mp, bool) or not 0.0 <= float(mp) <= 1.0:
                raise ValueError("min_prob: a probability in [0, 1]")
            mp = float(mp)
        return cls(tuple(labels), since, until, mp)


def _utc_text(v: Any, name: str) -> str | None:
    """An ISO time as the log stores it (UTC, ``...T..:..:..sssZ``); None when absent."""
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ValueError(f"{name}: an ISO 8601 time")
    try:
        t = dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: not an ISO 8601 time: {v!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t.isoformat(timespec="milliseconds") + "Z"


class EventStore:
    """Read-only queries of the event log, one ``mode=ro`` connection per worker thread."""

    def __init__(self, db: Path | None) -> None:
        self.db = db
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def conn(self) -> sqlite3.Connection | None:
        """This thread's connection (None while the file does not exist yet)."""
        c = getattr(self._local, "conn", None)
        if c is None and self.db is not None and self.db.exists():
            try:
                c = open_readonly(self.db)
            except EventLogError as exc:
                if "table" in str(exc):  # the writer is creating it (dymn-listen --web starts first)
                    log.debug("web: %s not ready: %s", self.db, exc)
                    return None
                raise
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._all.clear()

    def _expr(self, c: sqlite3.Connection) -> dict[str, str]:
        """Column -> SQL for this file's schema (schema 1 lacks the raw peak)."""
        have = {r[1] for r in c.execute("PRAGMA table_info(events)")}
        return {col: (col if col in have else ("peak_prob" if col == "peak_smoothed_prob" and "peak_prob" in have
                                                 else "NULL")) for col in COLUMNS}

    @staticmethod
    def _where(f: Filters, expr: dict[str, str]) -> tuple[list[str], list[Any]]:
        where, args = [], []  # type: list[str], list[Any]
        if f.labels:
            where.append(f"label IN ({','.join('?' * len(f.labels))})")
            args += list(f.labels)
        more, more_args = time_and_prob_clauses(f.since, f.until, f.min_prob, expr)
        return where + more, args + more_args

    def history_sql(self, f: Filters, bucket: str) -> tuple[str, list[Any]]:
        """Events per label and hour / day: the statement and its arguments."""
        c = self.conn()
        expr = self._expr(c) if c is not None else {k: k for k in COLUMNS}
        n = {"hour": 13, "day": 10}[bucket]
        where, args = self._where(f, expr)
        sql = (f"SELECT substr(start_utc, 1, {n}) AS bucket, label, count(*) AS events FROM events"
               + (" WHERE " + " AND ".join(where) if where else "") + " GROUP BY bucket, label ORDER BY bucket, label")
        return sql, args

    def history(self, f: Filters, bucket: str) -> dict[str, Any]:
        c = self.conn()
        if c is None:
            return {"bucket": bucket, "rows": [], "labels": []}
        sql, args = self.history_sql(f, bucket)
        rows = [{"bucket": b + (":00Z" if bucket == "hour" else ""), "label": lab, "events": n}
                for b, lab, n in c.execute(sql, args)]
        labels = sorted({r["label"] for r in rows})
        return {"bucket": bucket, "rows": rows, "labels": labels}

    def page_sql(self, f: Filters, limit: int, before: tuple[str, int] | None,
                 after: tuple[str, int] | None) -> tuple[str, list[Any]]:
        """A page of events, newest first (keyset paging on (start_utc, id): a page of month-old
        events costs what the first page costs). ``after``: the page above (newer)."""
        c = self.conn()
        expr = self._expr(c) if c is not None else {k: k for k in COLUMNS}
        where, args = self._where(f, expr)
        if before is not None:
            where.append("(start_utc, id) < (?, ?)")
            args += list(before)
        if after is not None:
            where.append("(start_utc, id) > (?, ?)")
            args += list(after)
        order = "ASC" if after is not None else "DESC"
        sql = (f"SELECT {', '.join(f'{e} AS {k}' for k, e in expr.items())} FROM events"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY start_utc {order}, id {order} LIMIT ?")
        return sql, args + [limit + 1]

    def page(self, f: Filters, limit: int, before: tuple[str, int] | None = None,
             after: tuple[str, int] | None = None) -> dict[str, Any]:
        c = self.conn()
        if c is None:
            return {"events": [], "more_older": False, "more_newer": False}
        sql, args = self.page_sql(f, limit, before, after)
        rows = [{k: r[k] for k in COLUMNS} for r in c.execute(sql, args)]
        more = len(rows) > limit
        rows = rows[:limit]
        if after is not None:
            rows.reverse()
            return {"events": rows, "more_newer": more, "more_older": True}
        return {"events": rows, "more_older": more, "more_newer": before is not None}

    def labels(self) -> list[dict[str, Any]]:
        c = self.conn()
        if c is None:
            return []
        return [{"label": lab, "events": n} for lab, n in
                c.execute("SELECT label, count(*) FROM events GROUP BY label ORDER BY label")]

    def event(self, event_id: int) -> dict[str, Any] | None:
        c = self.conn()
        if c is None:
            return None
        expr = self._expr(c)
        r = c.execute(f"SELECT {', '.join(f'{e} AS {k}' for k, e in expr.items())} FROM events WHERE id = ?",
                      (event_id,)).fetchone()
        return None if r is None else {k: r[k] for k in COLUMNS}

    def last_id(self) -> int | None:
        c = self.conn()
        if c is None:
            return None
        return c.execute("SELECT max(id) FROM events").fetchone()[0]


# -- the server ----------------------------------------------------------------------------


def _static_dir() -> Path:
    return Path(str(resources.files("dymn_edge.runtime.device") / "web_static"))


class WebServer:
    """The dashboard on its own thread and event loop: :meth:`start`, then :meth:`stop`."""

    def __init__(self, *, db: str | Path | None, clips: str | Path | None, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, live: LiveState | None = None, workers: int = 4) -> None:
        self.db = Path(db) if db else None
        self.clips = Path(clips) if clips else None
        self.host, self.port = host, int(port)
        self.token = token or None
        self.live = live
        self.store = EventStore(self.db)
        self.static = _static_dir()
        files = {p.name: p for p in self.static.iterdir() if p.suffix in STATIC_TYPES} if self.static.is_dir() else {}
        if "index.html" not in files:
            raise WebError(f"web: the dashboard's files are missing from {self.static} (a broken install?)")
        self._files = {name: (p.read_bytes(), STATIC_TYPES[p.suffix]) for name, p in files.items()}
        self._session = (hmac.new(self.token.encode(), b"dymn-edge web session", hashlib.sha256).hexdigest()
                         if self.token else "")
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dymn-web-db")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._clients: set[asyncio.Queue[bytes]] = set()
        self._last_id: int | None = None
        self.sse_clients_max = 0
        self.messages_sent = 0
        self._spec_lock = threading.Lock()

    # lifecycle
    def start(self, timeout: float = 30.0) -> None:
        """Bind and serve on a background thread (WebError when the address is unusable)."""
        self._thread = threading.Thread(target=self._main, name="dymn-web", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise WebError("web: the server did not start")
        if self._error is not None:
            err = self._error
            raise WebError(f"web: cannot serve on {self.host}:{self.port}: {getattr(err, 'strerror', None) or err}")
        if not is_loopback(self.host) and not self.token:
            log.warning("web: serving on %s without a token: anyone on the network can see the events and "
                        "listen to the clips (set --web-token or %s in --env-file)", self.host, TOKEN_ENV)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # bind errors: reported by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _serve(self) -> None:
        app = self.app()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:  # the port the system picked
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._broadcaster = asyncio.ensure_future(self._broadcast())

    async def _shutdown(self) -> None:
        self._broadcaster.cancel()
        for q in list(self._clients):
            q.put_nowait(b"")  # each stream ends
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        """Stop serving (open streams end) and close the database connections."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    # routes
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._host, self._auth], client_max_size=64 * 1024)
        app.on_response_prepare.append(self._server_header)
        app.router.add_get("/", self._index)
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/info", self._info)
        app.router.add_get("/api/labels", self._labels)
        app.router.add_post("/api/history", self._history)
        app.router.add_post("/api/events", self._events)
        app.router.add_get("/api/events/{id:[0-9]+}", self._event)
        app.router.add_get("/api/clip/{id:[0-9]+}", self._clip)
        app.router.add_get("/api/spectrogram/{id:[0-9]+}", self._spectrogram)
        app.router.add_get("/clips/{path:.*}", self._clip_path)
        app.router.add_get("/api/live", self._live)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        if not resp.prepared:
            for k, v in SECURITY_HEADERS.items():
                resp.headers.setdefault(k, v)
        return resp

    @staticmethod
    async def _server_header(request: web.Request, resp: web.StreamResponse) -> None:
        resp.headers["Server"] = "dymn-edge"  # not the framework and its version

    @web.middleware
    async def _host(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        """On a loopback bind, only loopback Host names (DNS rebinding: evil.example -> 127.0.0.1)."""
        if is_loopback(self.host) and not is_loopback((request.url.host or "").strip("[]")):
            raise web.HTTPMisdirectedRequest(text=json.dumps({"error": "this server answers loopback host names only"}),
                                             content_type="application/json")
        return await handler(request)

    def authorized(self, request: web.Request) -> bool:
        """The token as ``Authorization: Bearer``, or the login cookie (constant-time compares)."""
        if not self.token:
            return True
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session.encode())

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path in ("/login", "/static/style.css", "/static/icon.svg") or self.authorized(request):
            return await handler(request)
        if request.path == "/" and request.method == "GET":
            raise web.HTTPFound("/login")
        raise web.HTTPUnauthorized(text=json.dumps({"error": "a token is needed (Authorization: Bearer or log in)"}),
                                   content_type="application/json")

    def _file(self, name: str) -> web.Response:
        if name not in self._files:
            raise web.HTTPNotFound()
        body, ctype = self._files[name]
        return web.Response(body=body, content_type=ctype, charset="utf-8")

    async def _index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def _login_page(self, request: web.Request) -> web.Response:
        return self._file("login.html")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", ""))
        if not self.token:
            raise web.HTTPFound("/")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            await asyncio.sleep(0.5)  # slow down guessing
            body = self._files["login.html"][0].replace(b"<!--msg-->", b'<p class="error">Wrong token.</p>')
            return web.Response(body=body, status=403, content_type="text/html", charset="utf-8")
        resp = web.HTTPFound("/")
        resp.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", path="/",
                        secure=request.secure, max_age=30 * 86400)
        raise resp

    async def _logout(self, request: web.Request) -> web.Response:
        resp = web.HTTPFound("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    async def _static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A database / file call on the worker pool (never on the loop)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except (sqlite3.Error, EventLogError) as exc:
            log.warning("web: cannot read %s: %s", self.db, exc)
            raise web.HTTPServiceUnavailable(text=json.dumps({"error": f"cannot read the event log: {exc}"}),
                                             content_type="application/json") from None

    async def _info(self, request: web.Request) -> web.Response:
        info: dict[str, Any] = {"live": self.live is not None, "db": self.db is not None, "clips": self.clips is not None,
                                "auth": bool(self.token)}
        if self.live is not None:
            info.update(self.live.info)
        return web.json_response(info)

    async def _labels(self, request: web.Request) -> web.Response:
        return web.json_response({"labels": await self._run(self.store.labels)})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json() if request.can_read_body else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _bad("the body is not JSON") from None
        if not isinstance(body, dict):
            raise _bad("the body is a JSON object")
        return body

    async def _history(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        bucket = body.get("bucket", "hour")
        if bucket not in ("hour", "day"):
            raise _bad("bucket: hour or day")
        try:
            f = Filters.parse(body)
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return web.json_response(await self._run(self.store.history, f, bucket))

    async def _events(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            f = Filters.parse(body)
            limit = body.get("limit", 50)
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= PAGE_SIZE_MAX:
                raise ValueError(f"limit: 1 to {PAGE_SIZE_MAX}")
            keys = {}
            for k in ("before", "after"):
                v = body.get(k)
                if v is not None:
                    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)):
                        raise ValueError(f"{k}: [start_utc, id] of an event")
                    keys[k] = (v[0], v[1])
            if len(keys) > 1:
                raise ValueError("before or after, not both")
        except ValueError as exc:
            raise _bad(str(exc)) from None
        return web.json_response(await self._run(self.store.page, f, limit, keys.get("before"), keys.get("after")))

    async def _event(self, request: web.Request) -> web.Response:
        row = await self._run(self.store.event, int(request.match_info["id"]))
        if row is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such event"}), content_type="application/json")
        row["clip_available"] = self.clips is not None and resolve_clip(self.clips, row["clip"]) is not None
        return web.json_response(row)

    async def _clip_of(self, request: web.Request) -> Path:
        row = await self._run(self.store.event, int(request.match_info["id"]))
        if row is None or self.clips is None:
            raise web.HTTPNotFound(text="no such clip")
        path = await self._run(resolve_clip, self.clips, row["clip"])
        if path is None:
            raise web.HTTPNotFound(text="no clip for this event in the clips folder")
        return path

    async def _clip(self, request: web.Request) -> web.StreamResponse:
        path = await self._clip_of(request)
        return web.FileResponse(path, headers={"Content-Type": "audio/flac", "Cache-Control": "private, max-age=3600"})

    async def _clip_path(self, request: web.Request) -> web.StreamResponse:
        """A clip by its path in the clips folder (what a row's clip column names)."""
        if self.clips is None:
            raise web.HTTPNotFound(text="no clips folder")
        rel = request.match_info["path"]
        if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts or "\x00" in rel:
            raise web.HTTPForbidden(text="outside the clips folder")
        path = resolve_clip(self.clips, rel)
        if path is None:
            raise web.HTTPNotFound(text="no such clip")
        return web.FileResponse(path, headers={"Content-Type": "audio/flac", "Cache-Control": "private, max-age=3600"})

    def _spectrogram_bytes(self, clip: Path) -> bytes:
        cached = clip.with_suffix(".png")
        try:
            if cached.stat().st_mtime >= clip.stat().st_mtime:
                return cached.read_bytes()
        except OSError:
            pass
        data = spectrogram_png(clip)
        with self._spec_lock:
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.part")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, cached)
            except OSError as exc:  # a read-only clips folder: served, not cached
                log.debug("web: spectrogram not cached beside %s: %s", clip, exc)
                tmp.unlink(missing_ok=True)
        return data

    async def _spectrogram(self, request: web.Request) -> web.Response:
        clip = await self._clip_of(request)
        try:
            data = await self._run(self._spectrogram_bytes, clip)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise web.HTTPNotFound(text=f"cannot read the clip: {exc}") from None
        return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    # live
    async def _live(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no", **{k: v for k, v in SECURITY_HEADERS.items()
                                                                         if k != "Cache-Control"}})
        await resp.prepare(request)
        q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=8)
        self._clients.add(q)
        self.sse_clients_max = max(self.sse_clients_max, len(self._clients))
        try:
            await resp.write(self._message())
            while True:
                try:
                    msg = await asyncio.wait_for(q.get(), 15.0)
                except asyncio.TimeoutError:
                    msg = b": keep-alive\n\n"
                if not msg:
                    break
                await resp.write(msg)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(q)
        return resp

    def _message(self) -> bytes:
        snap = self.live.snapshot() if self.live is not None else {"live": False}
        snap["last_id"] = self._last_id
        return b"data: " + json.dumps(snap, separators=(",", ":")).encode() + b"\n\n"

    async def _broadcast(self) -> None:
        """One message per period to every client (a slow client skips messages, never
        holds others up); the database is checked for new events every DB_POLL_S."""
        seq, last_poll, last_sent_id = -1, 0.0, None
        while True:
            now = time.monotonic()
            if self.db is not None and now - last_poll >= DB_POLL_S:
                last_poll = now
                try:
                    self._last_id = await asyncio.get_running_loop().run_in_executor(self._pool, self.store.last_id)
                except (sqlite3.Error, EventLogError) as exc:
                    log.debug("web: last id: %s", exc)
            cur = self.live.seq if self.live is not None else 0
            if self._clients and (cur != seq or self._last_id != last_sent_id):
                seq, last_sent_id = cur, self._last_id
                msg = self._message()
                for q in list(self._clients):
                    if q.full():  # a stalled client: drop its oldest message
                        q.get_nowait()
                    q.put_nowait(msg)
                    self.messages_sent += 1
            await asyncio.sleep(LIVE_PERIOD_S)


def _bad(msg: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": msg}), content_type="application/json")


def live_info(tagger: Any, scorer: Any, model: str | Path) -> dict[str, Any]:
    """Engine / model / window of a listener, for the page's header."""
    meta = tagger.metadata
    return {"engine": getattr(tagger.engine, "name", ""), "model": Path(model).name,
            "model_name": getattr(meta, "model_name", ""), "precision": getattr(meta, "precision", ""),
            "window_s": round(float(scorer.window_s), 3), "hop_s": round(float(scorer.hop_s), 3),
            "labels": len(tagger.labels)}


def serve_until_stopped(server: WebServer, stop: threading.Event) -> None:
    """Block until ``stop`` is set (``dymn-events serve``), then stop the server."""
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
