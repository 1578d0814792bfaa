"""Rows -> part files (Parquet via pyarrow, or JSON Lines) and parts -> the output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.archive.options import PIP_CLUSTER, ArchiveOptions
from dymn_edge.runtime.archive.resume import STAMP_KEY, RunIdentity, write_atomic
from dymn_edge.runtime.output import json_line, window_json

__all__ = ["concat_payloads", "count_error_rows", "encode", "error_row", "merge", "need_pyarrow", "parquet_schema"]

def error_row(path: str, message: str, opts: ArchiveOptions) -> dict[str, Any]:
    row: dict[str, Any] = {"file": path, "start": None, "end": None, "labels": [], "indices": [],
                           "probabilities": np.zeros(0, np.float32), "error": message}
    if opts.scores:
        row["scores"] = None
    if opts.embeddings:
        row["embedding"] = None
    return row


def parquet_schema(opts: ArchiveOptions) -> Any:
    import pyarrow as pa  # noqa: PLC0415  (optional: the cluster extra)

    fields = [pa.field("file", pa.string(), nullable=False), pa.field("start", pa.float64()),
              pa.field("end", pa.float64()), pa.field("labels", pa.list_(pa.string())),
              pa.field("indices", pa.list_(pa.int32())), pa.field("probabilities", pa.list_(pa.float32()))]
    if opts.scores:
        fields.append(pa.field("scores", pa.list_(pa.float32())))
    if opts.embeddings:
        fields.append(pa.field("embedding", pa.list_(pa.float32())))
    fields.append(pa.field("error", pa.string()))
    return pa.schema(fields)


def encode(rows: list[dict[str, Any]], opts: ArchiveOptions, labels: Sequence[Any]) -> bytes:
    """Rows -> the bytes of one part file (Parquet table or JSON Lines)."""
    if opts.fmt == "jsonl":
        lines = []
        for r in rows:
            if r["error"] is not None:
                obj: dict[str, Any] = {"file": r["file"], "error": r["error"]}
            else:
                sel = list(zip(r["indices"], (float(p) for p in r["probabilities"])))
                obj = window_json(r["start"], r["end"], labels, sel, file=r["file"])
                if opts.scores:
                    obj["scores"] = [float(x) for x in r["scores"]]
                if opts.embeddings:
                    obj["embedding"] = [float(x) for x in r["embedding"]]
            lines.append(json_line(obj) + "\n")
        return "".join(lines).encode("utf-8")
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    schema = parquet_schema(opts)
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    table = pa.Table.from_pydict(cols, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def concat_payloads(payloads: list[bytes], opts: ArchiveOptions) -> bytes:
    if opts.fmt == "jsonl":
        return b"".join(payloads)
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    table = pa.concat_tables([pq.read_table(pa.BufferReader(p)) for p in payloads])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def merge(parts: list[Path], output: Path, opts: ArchiveOptions, ident: RunIdentity) -> None:
    """Concatenate part files in task order into ``output`` (atomically).

    A Parquet output carries ``ident`` in its schema metadata, so a re-run of the identical
    job can prove that the file already holds its rows.
    """
    if opts.fmt == "jsonl":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                for p in parts:
                    out.write(p.read_bytes())
    else:
        import pyarrow.parquet as pq  # noqa: PLC0415

        schema = parquet_schema(opts).with_metadata({STAMP_KEY: json.dumps(ident.record()).encode()})

        def write(tmp: Path) -> None:
            with pq.ParquetWriter(tmp, schema) as writer:
                for p in parts:
                    writer.write_table(pq.read_table(p).replace_schema_metadata(schema.metadata))
    write_atomic(output, write)


def count_error_rows(output: Path) -> int:
    """Error rows in a merged output file."""
    if output.suffix.lower() == ".jsonl":
        n = 0
        with open(output, encoding="utf-8") as fh:
            for line in fh:
                if '"error"' in line and "error" in json.loads(line):
                    n += 1
        return n
    import pyarrow.parquet as pq  # noqa: PLC0415

    col = pq.read_table(output, columns=["error"]).column("error")
    return len(col) - col.null_count


def need_pyarrow(fmt: str) -> None:
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401, PLC0415
        except ImportError as exc:
            raise DymnEdgeError(f"Parquet output needs pyarrow: {PIP_CLUSTER} (or use --output X.jsonl)") from exc
