"""The detection log: every closed event as one row of a SQLite file (``dymn-listen --db``).

Built to survive a device's life: WAL mode with ``synchronous=FULL`` and one transaction
per event, so a power cut or ``kill -9`` leaves a readable file holding every event that
was closed before it (an event still open is not in the file; on a clean stop it is closed
and written). A ``schema_version`` table lets later versions migrate old files; a file
from a newer version is refused rather than misread.

Each row: label, mid, index, start / end as UTC ISO 8601 text and as stream seconds, the
peak raw window probability (``peak_raw_prob``: what the model said), the peak and mean
smoothed probability (``peak_smoothed_prob``, ``mean_prob``: what the thresholds saw), the
model file, its sha256, the input device, the clip file (if ``--clips``) and the host.
``dymn-events`` (:mod:`dymn_edge.runtime.device.events_cli`) reads it.

Schema 1 (the first files, without the raw peak) had one ``peak_prob`` column: the smoothed
peak; opening such a file for writing migrates it in one transaction (the column is renamed
``peak_smoothed_prob``, ``peak_raw_prob`` is added and stays NULL on the old rows: that
value was never recorded). Reading a schema-1 file maps it the same way without writing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dymn_edge.cliutil import check_input_file, check_writable_folder
from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.events import Event
from dymn_edge.runtime.sinks import EventSink

log = logging.getLogger(__name__)

__all__ = ["EventLog", "EventLogError", "EventQuery", "SCHEMA_VERSION", "file_sha256", "utc_iso", "query_events",
           "time_and_prob_clauses",
           "open_readonly", "check_event_db", "COLUMNS"]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    mid TEXT,
    label_index INTEGER NOT NULL,
    start_utc TEXT NOT NULL,
    end_utc TEXT NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    duration_s REAL NOT NULL,
    peak_raw_prob REAL,
    peak_smoothed_prob REAL NOT NULL,
    mean_prob REAL,
    model TEXT,
    model_sha256 TEXT,
    device TEXT,
    host TEXT,
    clip TEXT,
    recorded_utc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_start ON events (start_utc);
CREATE INDEX IF NOT EXISTS events_label ON events (label);
"""

#: Columns of ``events`` in table order (what dymn-events exports).
COLUMNS = ("id", "label", "mid", "label_index", "start_utc", "end_utc", "start_s", "end_s",
           "duration_s", "peak_raw_prob", "peak_smoothed_prob", "mean_prob", "model", "model_sha256", "device", "host",
           "clip", "recorded_utc")


class EventLogError(DymnEdgeError):
    """A database file that cannot be opened, written or understood."""


def utc_iso(epoch: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z: sorts as text in time order (four-digit
    years, also before 1000, where strftime's %Y would drop the zeros)."""
    t = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return t.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (which exact model produced a detection, months later)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: How each schema stores the columns of :data:`COLUMNS` that later schemas renamed / added.
_READ_AS = {1: {"peak_raw_prob": "NULL", "peak_smoothed_prob": "peak_prob"}}


def _check_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version (EventLogError when it is none or newer than this code)."""
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if not rows:
        raise EventLogError(f"{path}: not a dymn-edge event database (empty schema_version table)")
    version = int(max(r[0] for r in rows))
    if version > SCHEMA_VERSION:
        raise EventLogError(f"{path}: event database schema version {version} is newer than this "
                            f"dymn-edge understands ({SCHEMA_VERSION}); upgrade dymn-edge")
    return version


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring an older file to :data:`SCHEMA_VERSION` (inside the caller's transaction)."""
    if version < 2:  # the smoothed peak was stored as peak_prob; the raw peak was not stored
        conn.execute("ALTER TABLE events RENAME COLUMN peak_prob TO peak_smoothed_prob")
        conn.execute("ALTER TABLE events ADD COLUMN peak_raw_prob REAL")
    conn.execute("DELETE FROM schema_version")
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


class EventLog(EventSink):
    """Sink writing each closed event in its own transaction."""

    name = "db"
    retries = 2  # a failed commit (disk busy, locked by a long reader) is tried again
    retry_delay = 1.0

    def __init__(self, path: str | Path, *, model: str | Path | None = None,
                 device: str | Callable[[], str] = "", model_sha256: str | None = None) -> None:
        """``device``: the input device name, or a callable giving it (known once opened)."""
        self.path = Path(path)
        self.model = str(model) if model is not None else None
        self.model_sha256 = model_sha256 if model_sha256 is not None else (
            file_sha256(model) if model is not None else None)
        self.device = device
        self.host = socket.gethostname()
        self.written = 0
        self.conn: sqlite3.Connection | None = None
        self.open()

    def open(self) -> None:
        """Open (creating it and its folder) the database; set WAL, check the schema."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # opened here, written on the sinks' worker thread (one thread at a time)
            conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: SQLite refused WAL mode (journal_mode=%s)", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut
            conn.execute("BEGIN IMMEDIATE")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "events" in tables and "schema_version" in tables:
                version = _check_version(conn, self.path)
                if version < SCHEMA_VERSION:
                    _migrate(conn, version)
                    log.warning("%s: event database migrated from schema %d to %d", self.path,
                                version, SCHEMA_VERSION)
            else:
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                if not conn.execute("SELECT 1 FROM schema_version").fetchone():
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
            _check_version(conn, self.path)
        except EventLogError:
            conn.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            raise EventLogError(f"cannot open event database {self.path}: {exc}") from exc
        self.conn = conn
        log.info("event database %s (schema %d)", self.path, SCHEMA_VERSION)

    def event(self, ev: Event) -> None:
        if ev.kind != "end":
            return
        if self.conn is None:  # a failed re-open: try again (an error here is counted, not lost)
            self.open()
        start_utc = ev.start_utc if ev.start_utc is not None else dt.datetime.now(dt.timezone.utc).timestamp()
        end_utc = ev.end_utc if ev.end_utc is not None else start_utc + (ev.duration or 0.0)
        row = (ev.label.display_name, ev.label.mid, ev.label.index, utc_iso(start_utc), utc_iso(end_utc),
               round(ev.start, 3), round(float(ev.end if ev.end is not None else ev.start), 3),
               round(ev.duration or 0.0, 3), None if ev.peak_raw is None else float(ev.peak_raw),
               float(ev.probability), None if ev.mean is None else float(ev.mean), self.model, self.model_sha256,
               self.device() if callable(self.device) else self.device, self.host, ev.clip,
               utc_iso(dt.datetime.now(dt.timezone.utc).timestamp()))
        with self.conn:  # one transaction per event (sqlite3 commits on leaving the block)
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "INSERT INTO events (label, mid, label_index, start_utc, end_utc, start_s, end_s, "
                "duration_s, peak_raw_prob, peak_smoothed_prob, mean_prob, model, model_sha256, device, "
                "host, clip, recorded_utc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        self.written += 1

    def reopen(self) -> None:
        """Close and re-open the file (SIGHUP): a moved / deleted file is created anew."""
        self._close_conn()
        self.open()
        log.info("event database re-opened: %s", self.path)

    def _close_conn(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def close(self) -> dict[str, Any]:
        self._close_conn()
        return {"db_events": self.written}


def check_event_db(path: str | Path) -> None:
    """What :meth:`EventLog.open` would refuse, found without writing (``--print-systemd-unit``):
    an existing file must be an event database this version reads; a new one needs a
    folder it can be created in."""
    p = Path(path)
    if p.exists():
        if p.is_dir():
            raise EventLogError(f"event database {p} is a folder")
        open_readonly(p).close()
        if not (os.access(p, os.W_OK) and os.access(p.absolute().parent, os.W_OK | os.X_OK)):
            raise EventLogError(f"cannot write event database {p} (it and its folder must be writable: "
                                "WAL mode adds -wal / -shm files beside it)")
        return
    parent = next((a for a in p.absolute().parents if a.exists()), None)
    if parent is None or not parent.is_dir():
        raise EventLogError(f"cannot create event database {p}: {parent} is not a writable folder")
    # a probe file, not permission bits: root may "write" in /proc by os.access
    check_writable_folder(parent, f"cannot create event database {p}", EventLogError)


# -- reading -------------------------------------------------------------------------------


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open an event database for reading (EventLogError when missing or not one)."""
    try:
        p = check_input_file(path, "event database")  # a folder is named as such, not "not found"
    except DymnEdgeError as exc:
        raise EventLogError(str(exc)) from None
    try:
        conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True, timeout=10.0)
        conn.row_factory = sqlite3.Row
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise EventLogError(f"{p}: not a readable SQLite database ({exc})") from exc
    if not {"events", "schema_version"} <= tables:
        conn.close()
        raise EventLogError(f"{p}: not a dymn-edge event database (no events / schema_version table)")
    _check_version(conn, p)
    return conn


@dataclass
class EventQuery:
    """Filters of :func:`query_events` (all optional, combined with AND)."""

    labels: Sequence[str] = ()  # display names (case-insensitive) or mids
    since: str | None = None  # UTC ISO text, compared as text
    until: str | None = None
    min_prob: float | None = None  # on the raw peak (the smoothed one for schema-1 rows, which lack it)
    limit: int | None = None
    newest_first: bool = False


def time_and_prob_clauses(since: str | None, until: str | None, min_prob: float | None,
                          expr: dict[str, str]) -> tuple[list[str], list[Any]]:
    """WHERE clauses and arguments for a UTC start range and a minimum peak probability.

    Shared by ``dymn-events`` and the dashboard so both read a filter the same way; ``expr``
    maps each column to its expression in this log's schema (schema-1 rows lack the raw peak).
    """
    where, args = [], []  # type: list[str], list[Any]
    if since:
        where.append("start_utc >= ?")
        args.append(since)
    if until:
        where.append("start_utc < ?")
        args.append(until)
    if min_prob is not None:
        where.append(f"coalesce({expr['peak_raw_prob']}, {expr['peak_smoothed_prob']}) >= ?")
        args.append(min_prob)
    return where, args


def query_events(conn: sqlite3.Connection, q: EventQuery) -> Iterator[dict[str, Any]]:
    """Rows of ``events`` matching ``q``, as dicts, in start time order."""
    where, args = [], []  # type: list[str], list[Any]
    if q.labels:
        names = [s.strip() for s in q.labels if s.strip()]
        where.append("(" + " OR ".join(["lower(label) = lower(?) OR mid = ?"] * len(names)) + ")")
        for n in names:
            args += [n, n]
    version = int(conn.execute("SELECT max(version) FROM schema_version").fetchone()[0])
    expr = {c: _READ_AS.get(version, {}).get(c, c) for c in COLUMNS}
    more, more_args = time_and_prob_clauses(q.since, q.until, q.min_prob, expr)
    where, args = where + more, args + more_args
    sql = f"SELECT {', '.join(f'{e} AS {c}' for c, e in expr.items())} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY start_utc " + ("DESC" if q.newest_first else "ASC") + ", id"
    if q.limit is not None:
        sql += " LIMIT ?"
        args.append(int(q.limit))
    for row in conn.execute(sql, args):
        yield {k: row[k] for k in COLUMNS}
