"""``dymn-events``: list, filter, export and summarise what ``dymn-listen --db`` stored.

Reads the database read-only (safe while dymn-listen writes to it: WAL readers never block
the writer). Times are UTC; ``--since`` / ``--until`` take ISO dates or times (read as UTC
unless they carry an offset) or an age like ``30m``, ``6h``, ``7d``.

``dymn-events serve --db DB --clips DIR`` serves the log (and its clips) as the web dashboard
of :mod:`dymn_edge.runtime.device.web`, read-only, beside a running dymn-listen.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from dymn_edge.errors import DymnEdgeError
from dymn_edge.cliutil import OneLineErrorParser, add_verbose_and_version, non_empty, run_guarded, setup_logging
from dymn_edge.runtime.device.eventlog import COLUMNS, EventLogError, EventQuery, open_readonly, query_events, utc_iso
from dymn_edge.runtime.device.options import TOKEN_ENV, import_aiohttp, parse_web_address, read_env_file, web_token

__all__ = ["main", "build_parser", "build_serve_parser", "parse_time", "summary_rows"]

EXAMPLES = """\
examples:
  dymn-events events.db                                 every event, oldest first
  dymn-events events.db --label Dog --since 24h         dogs of the last day
  dymn-events events.db --since 2026-05-01 --format csv > may.csv
  dymn-events events.db --format jsonl --min-prob 0.8   JSON Lines, confident ones only
  dymn-events events.db --summary --since 7d            events per label and hour (UTC)
  dymn-events serve --db events.db --clips clips/       the web dashboard on http://127.0.0.1:8080/
"""

SERVE_EXAMPLES = f"""\
examples:
  dymn-events serve --db events.db --clips clips/               http://127.0.0.1:8080/ (this machine)
  dymn-events serve --db events.db --clips clips/ --web 0.0.0.0:8080 --env-file web.env
                                          the network, with a token ({TOKEN_ENV}=... in web.env, mode 0600)
The log and the clips are read only (a running dymn-listen keeps writing them); needs the
[web] extra (aiohttp).
"""

SUMMARY_COLUMNS = ("hour_utc", "label", "events", "total_s", "max_peak_raw_prob", "max_peak_smoothed_prob",
                   "mean_prob")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: dt.datetime | None = None) -> str:
    """UTC ISO text (as stored) from an ISO date / time or an age (``6h``: six hours ago)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    m = _AGE.match(text)
    if m:
        try:
            t = now - dt.timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
        except OverflowError:  # timedelta / datetime out of range (before year 1)
            raise DymnEdgeError(f"time '{text}' reaches before year 1; give a shorter age") from None
    else:
        try:
            t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise DymnEdgeError(f"not a time: '{text}' (use e.g. 2026-05-01, 2026-05-01T06:30, "
                                "30m, 6h, 7d)") from exc
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
    try:
        return utc_iso(t.timestamp())
    except (ValueError, OverflowError, OSError):  # in UTC, past year 9999 / before year 1
        raise DymnEdgeError(f"time '{text}' is outside the years 1-9999 in UTC") from None


def summary_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events per (UTC hour, label): count, total seconds, max raw and smoothed peaks, mean of
    means (the raw peak is None where no row has one: schema-1 files did not record it)."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["start_utc"][:13] + ":00Z", r["label"])
        a = acc.setdefault(key, {"hour_utc": key[0], "label": key[1], "events": 0, "total_s": 0.0,
                                 "max_peak_raw_prob": None, "max_peak_smoothed_prob": 0.0, "_means": []})
        a["events"] += 1
        a["total_s"] += float(r["duration_s"] or 0.0)
        if r["peak_raw_prob"] is not None:
            a["max_peak_raw_prob"] = max(a["max_peak_raw_prob"] or 0.0, float(r["peak_raw_prob"]))
        a["max_peak_smoothed_prob"] = max(a["max_peak_smoothed_prob"], float(r["peak_smoothed_prob"] or 0.0))
        if r["mean_prob"] is not None:
            a["_means"].append(float(r["mean_prob"]))
    out = []
    for key in sorted(acc):
        a = acc[key]
        means = a.pop("_means")
        a["total_s"] = round(a["total_s"], 3)
        if a["max_peak_raw_prob"] is not None:
            a["max_peak_raw_prob"] = round(a["max_peak_raw_prob"], 6)
        a["max_peak_smoothed_prob"] = round(a["max_peak_smoothed_prob"], 6)
        a["mean_prob"] = round(sum(means) / len(means), 6) if means else None
        out.append(a)
    return out


def _write(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str, out: TextIO) -> None:
    if fmt == "jsonl":
        for r in rows:
            out.write(json.dumps({c: r[c] for c in columns}, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        w = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    else:
        def cell(v: Any) -> str:
            if v is None:
                return "-"
            return f"{v:.3f}" if isinstance(v, float) else str(v)

        table = [[cell(r[c]) for c in columns] for r in rows]
        widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
        for t in table:
            out.write("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip() + "\n")


TABLE_COLUMNS = ("id", "start_utc", "duration_s", "label", "peak_raw_prob", "peak_smoothed_prob", "mean_prob",
                 "clip")


#: SQLite's LIMIT is a signed 64-bit integer.
MAX_LIMIT = 2**63 - 1


def _events(args: argparse.Namespace) -> int:
    if args.limit is not None and not 1 <= args.limit <= MAX_LIMIT:
        raise DymnEdgeError(f"--limit must be between 1 and {MAX_LIMIT}, got {args.limit}")
    if args.summary and (args.limit is not None or args.newest_first):  # accepted and ignored otherwise
        raise DymnEdgeError("--limit / --newest-first order and cut the event list; --summary counts "
                            "every matching event per hour: leave them out")
    if any(not name.strip() for item in args.label for name in item.split("|")):
        raise DymnEdgeError(f"--label got an empty name in {args.label!r}")
    if args.min_prob is not None and not 0.0 <= args.min_prob <= 1.0:  # nan fails this too
        raise DymnEdgeError(f"--min-prob must be a probability in [0, 1], got {args.min_prob:g}")
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    if since is not None and until is not None and since >= until:  # nothing could match
        raise DymnEdgeError(f"--since {args.since} ({since}) is not before --until {args.until} ({until})")
    q = EventQuery(labels=[x for item in args.label for x in item.split("|")], since=since, until=until,
                   min_prob=args.min_prob, limit=None if args.summary else args.limit,
                   newest_first=args.newest_first)
    conn = open_readonly(args.db)
    try:
        rows = list(query_events(conn, q))
    except sqlite3.Error as exc:  # e.g. a damaged file
        raise EventLogError(f"cannot read {args.db}: {exc}") from exc
    finally:
        conn.close()
    out = sys.stdout
    if args.summary:
        _write(summary_rows(rows), SUMMARY_COLUMNS, args.format, out)
    else:
        _write(rows, TABLE_COLUMNS if args.format == "table" else COLUMNS, args.format, out)
    out.flush()
    return 0


class _EventsParser(OneLineErrorParser):
    """``dymn-events serve ...`` goes to the serve parser, so one parser checks every
    documented dymn-events command line (a database file named 'serve' is ./serve)."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        if argv[:1] == ["serve"]:
            ns = build_serve_parser().parse_args(argv[1:], namespace)
            ns.command = "serve"
            return ns
        return super().parse_args(argv, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The ``dymn-events`` parser (tests check the documented command lines against it)."""
    p = _EventsParser(prog="dymn-events", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db", type=non_empty, metavar="DB", help="SQLite file written by dymn-listen --db")
    p.add_argument("--label", action="append", default=[], metavar="NAME|MID",
                   help="only these labels (display name, case-insensitive, or mid; repeat or use |)")
    p.add_argument("--since", type=non_empty, metavar="TIME", help="events starting at or after TIME (ISO, or 30m / 6h / 7d ago)")
    p.add_argument("--until", type=non_empty, metavar="TIME", help="events starting before TIME")
    p.add_argument("--min-prob", type=float, default=None, metavar="P",
                   help="raw peak probability >= P (rows of schema-1 files, which have no raw peak: "
                        "their smoothed peak)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N events")
    p.add_argument("--newest-first", action="store_true", help="newest events first")
    p.add_argument("--format", choices=("table", "csv", "jsonl"), default="table",
                   help="output format (default: a table; csv / jsonl carry every column)")
    p.add_argument("--summary", action="store_true", help="events per UTC hour and label instead of events")
    add_verbose_and_version(p)
    return p


def _serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C (both a clean stop: exit 0)."""
    host, port = parse_web_address(args.web)
    env = {**os.environ, **(read_env_file(args.env_file) if args.env_file else {})}
    token = web_token(args.web_token, env)
    import_aiohttp()
    open_readonly(args.db).close()  # a missing / foreign file is one line before serving
    if args.clips is not None and not os.path.isdir(args.clips):
        raise DymnEdgeError(f"clips folder {args.clips} is not a folder")
    from dymn_edge.runtime.device.web import WebServer  # noqa: PLC0415 (aiohttp: the optional [web] extra)

    server = WebServer(db=args.db, clips=args.clips, host=host, port=port, token=token)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    print(f"dymn-events: dashboard of {args.db} on {server.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def build_serve_parser() -> argparse.ArgumentParser:
    """The ``dymn-events serve`` parser."""
    p = OneLineErrorParser(prog="dymn-events serve",
                           description="Serve an event log and its clips as the web dashboard (read-only).",
                           epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=non_empty, required=True, metavar="DB", help="SQLite file written by dymn-listen --db")
    p.add_argument("--clips", type=non_empty, default=None, metavar="DIR", help="its clips folder (dymn-listen --clips)")
    p.add_argument("--web", type=non_empty, default="8080", metavar="[HOST:]PORT",
                   help="address (default 8080 on 127.0.0.1: this machine only; 0.0.0.0:8080 for the network)")
    p.add_argument("--web-token", type=non_empty, default=None, metavar="TOKEN",
                   help=f"ask for this token (better: {TOKEN_ENV}=... in --env-file or the environment)")
    p.add_argument("--env-file", type=non_empty, default=None, metavar="FILE",
                   help=f"KEY=VALUE lines (mode 0600) with {TOKEN_ENV}")
    add_verbose_and_version(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dymn-events`` (``dymn-events serve ...``: the dashboard)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if getattr(args, "command", None) == "serve":
        return run_guarded(lambda: _serve(args), "dymn-events serve", verbose=args.verbose)
    return run_guarded(lambda: _events(args), "dymn-events", verbose=args.verbose)
