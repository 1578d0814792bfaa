"""One way to open an ONNX Runtime session: the CPU provider, quiet, threads as asked.

Every stage that runs an ONNX graph (the runtime's engine, export-time checks, the
quantizer's calibration, the graph MAC counter, the metadata reader) opens it here, so the
provider, log level and thread settings are the same everywhere and a change (a new
provider, a session option) is made once. ONNX Runtime is optional and heavy: it is imported
on the first call; :class:`ImportError` reaches the caller, who knows which extra to name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ort_session"]


def ort_session(model: str | Path | bytes, *, threads: int | None = None, optimize: bool = True) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU execution provider.

    ``model``: a path or the serialized bytes. ``threads``: intra-op threads (None: ORT's
    default, one per core); with a count, workers do not spin, since spinning burns the
    cores that audio capture and other programs need. ``optimize=False`` disables graph
    optimisation (to read intermediate tensors as written, e.g. for MAC counting).
    """
    import onnxruntime as ort  # noqa: PLC0415 (optional, heavy)

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
