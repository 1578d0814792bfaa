"""TFLite writer: patched module -> litert-torch flatbuffer (fp32), plus flatbuffer metadata.

The graph is fixed-shape (batch 1, the export window's frame count): LiteRT plans memory for
one shape, and the ``static_k`` strategy's graph is then delegated to XNNPACK in one
partition. Input ``mel`` (1, 1, 128, T); outputs ``logits``, ``embedding`` (named through the
signature ``serving_default``). fp16 / int8 are derived from this fp32 flatbuffer by
:mod:`dymn_edge.export.quantize`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dymn_edge.errors import ExportError, one_line
from dymn_edge.export.formats import GraphIO, mel_io
from dymn_edge.native_output import converter_output
from dymn_edge.metadata import METADATA_KEY

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


def _named_io(module, io: GraphIO):
    """Wrap so that litert-torch names the input by keyword and the outputs by dict key.

    The converter takes the input's name from ``forward``'s parameter, so each input name
    has its own small wrapper class.
    """
    from torch import nn  # noqa: PLC0415

    class _Named(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def _outputs(self, x):
            return dict(zip(io.output_names, self.inner(x)))

    class MelIO(_Named):
        def forward(self, mel):
            return self._outputs(mel)

    class WaveformIO(_Named):
        def forward(self, waveform):
            return self._outputs(waveform)

    wrappers = {"mel": MelIO, "waveform": WaveformIO}
    if io.input_name not in wrappers:
        raise ExportError(f"no TFLite signature wrapper for an input named '{io.input_name}'")
    return wrappers[io.input_name](module).eval()


def convert_tflite(module, *, io: GraphIO | None = None, frames: int | None = None,
                   quant_config=None) -> bytes:
    """fp32 (or PT2E-quantized, when ``quant_config`` is given) flatbuffer of ``module``.

    ``io``: the graph's signature (default: the log-mel graph of ``frames`` frames).
    """
    import torch  # noqa: PLC0415

    with converter_output():  # importing litert-torch already prints (torchao, absl)
        try:
            import litert_torch  # noqa: PLC0415
        except ImportError as exc:
            raise ExportError("TFLite export needs litert-torch: pip install 'dymn-edge[export]'") from exc
    if io is None:
        if frames is None:
            raise TypeError("convert_tflite needs io= or frames=")
        io = mel_io(frames)
    _quiet_converter_progress()
    try:
        with torch.no_grad(), converter_output():
            edge = litert_torch.convert(_named_io(module, io),
                                        sample_kwargs={io.input_name: torch.zeros(io.example_shape)},
                                        quant_config=quant_config)
            return bytes(edge.model_content())  # the flatbuffer is written (and logged) here
    except Exception as exc:  # the converter raises many types
        raise ExportError(f"TFLite conversion failed: {one_line(exc)}") from exc


def _quiet_converter_progress() -> None:
    """litert-torch prints a step tree to the console; keep it for --verbose (DEBUG) only."""
    try:
        from litert_torch import progress  # noqa: PLC0415

        progress.console.quiet = not logging.getLogger("dymn_edge").isEnabledFor(logging.DEBUG)
    except (ImportError, AttributeError):  # another litert-torch layout: leave it as it is
        pass


def add_tflite_metadata(data: bytes, name: str, payload: bytes) -> bytes:
    """The flatbuffer ``data`` with a ``metadata`` entry ``name`` -> a new buffer ``payload``.

    An entry of the same name is replaced. Uses the object API of the TFLite schema that
    ai-edge-litert ships (unpack, append Buffer + Metadata, repack).
    """
    import flatbuffers  # noqa: PLC0415

    from ai_edge_litert import schema_py_generated as fb  # noqa: PLC0415

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for b in model.buffers or []:
        # AI Edge Quantizer writes the large-model layout (constants after the flatbuffer,
        # addressed by offset/size): inline them, or repacking would drop the weights.
        if getattr(b, "offset", 0) and getattr(b, "size", 0):
            b.data = np.frombuffer(data, dtype=np.uint8, count=b.size, offset=b.offset).copy()
            b.offset, b.size = 0, 0
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != name]
    buf = fb.BufferT()
    buf.data = np.frombuffer(payload, dtype=np.uint8).copy()
    model.buffers = list(model.buffers or []) + [buf]
    entry = fb.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(data) + len(payload) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _name(n: bytes | str | None) -> str:
    return n.decode() if isinstance(n, bytes) else (n or "")


def write_tflite(data: bytes, path: str | Path, metadata_json: str | None = None) -> Path:
    """Write the flatbuffer (with the dymn-edge metadata entry when given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata_json is not None:
        data = add_tflite_metadata(data, METADATA_KEY, metadata_json.encode("utf-8"))
    path.write_bytes(data)
    return path


def tflite_io(data: bytes) -> tuple[list[dict], list[dict]]:
    """Signature inputs / outputs: name, shape, dtype, (scale, zero_point) of ``data``."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    it = Interpreter(model_content=data)
    runner = it.get_signature_runner(SIGNATURE)

    def info(details: dict) -> list[dict]:
        out = []
        for name, d in details.items():
            scale, zp = d.get("quantization", (0.0, 0))
            out.append({"name": name, "shape": [int(s) for s in d["shape"]],
                        "dtype": d["dtype"].__name__,
                        "scale": float(scale) if scale else None,
                        "zero_point": int(zp) if scale else None})
        return out

    return info(runner.get_input_details()), info(runner.get_output_details())


def export_tflite(module, path: str | Path, *, io: GraphIO, dynamic_batch: bool = False) -> Path:
    """fp32 TFLite of ``module`` with the fixed signature ``io``, written without metadata.

    The formats table's writer (same call as ONNX's); LiteRT files are fixed-shape, so
    ``dynamic_batch`` must be False.
    """
    if dynamic_batch:
        raise ExportError("TFLite files are fixed-shape: no dynamic batch")
    return write_tflite(convert_tflite(module, io=io), path)
