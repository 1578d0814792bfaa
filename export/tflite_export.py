"""TFLite writer: patched module -> litert-torch flatbuffer (fp32), plus flatbuffer metadata.

The graph is fixed-shape (batch 1, the export window's frame count): LiteRT plans memory for
one shape, and the ``static_k`` strategy's graph is then delegated to XNNPACK in one
partition. Input ``mel`` (1, 1, 128, T); outputs ``logits``, ``embedding`` (named through the
signature ``serving_default``). fp16 / int8 are derived from this fp32 flatbuffer by
:mod:`dymn_edge.export.quantize`.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from dymn_edge.errors import ExportError, one_line
from dymn_edge.export.formats import GraphIO, mel_io
from dymn_edge.export.mediapipe_metadata import add_mediapipe_metadata
from dymn_edge.export.waveform import mediapipe_info
from dymn_edge.metadata import METADATA_KEY, ModelMetadata, TensorInfo
from dymn_edge.native_output import converter_output

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


#: output order of the metadata (the signature's dict order is alphabetical)
_OUTPUT_ORDER = {"logits": 0, "probabilities": 0, "embedding": 1}


def io_info(path: str | Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The formats table's I/O reader: signature inputs and outputs as metadata entries."""
    ins, outs = tflite_io(Path(path).read_bytes())
    outs = sorted(outs, key=lambda d: _OUTPUT_ORDER.get(d["name"], 2))
    return [TensorInfo(**d) for d in ins], [TensorInfo(**d) for d in outs]


def write_metadata(path: str | Path, meta: ModelMetadata) -> None:
    """The formats table's metadata writer: the JSON entry, then MediaPipe's for waveform files."""
    path = Path(path)
    write_tflite(path.read_bytes(), path, meta.to_json())
    if meta.takes_waveform:  # last: repacking the flatbuffer drops the appended labels ZIP
        path.write_bytes(add_mediapipe_metadata(path.read_bytes(), mediapipe_info(meta)))


@lru_cache(maxsize=1)
def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415  (the litert extra)

    return {v: k for k, v in vars(schema.BuiltinOperator).items()
            if not k.startswith("_") and isinstance(v, int)}


def count_ops(path: Path) -> Counter:
    """The formats table's op counter, read with the flatbuffer schema of ``ai-edge-litert``."""
    try:
        from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415  (the litert extra)
    except ImportError as exc:
        raise ExportError(f"counting TFLite ops needs ai-edge-litert ({exc})") from None
    try:
        model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    except Exception as exc:  # a truncated or foreign file: flatbuffers raises anything
        raise ExportError(f"{path}: not a readable TFLite flatbuffer ({exc})") from None
    names = _op_names()
    codes = []
    for oc in model.operatorCodes or []:
        # builtinCode holds codes > 127; old files only set deprecatedBuiltinCode (max() is
        # the schema's documented rule for reading both)
        code = max(oc.builtinCode or 0, oc.deprecatedBuiltinCode or 0)
        name = names.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM" and oc.customCode:
            cc = oc.customCode
            name = f"CUSTOM:{cc.decode() if isinstance(cc, bytes) else cc}"
        codes.append(name)
    counts: Counter = Counter()
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            counts[codes[op.opcodeIndex]] += 1
    return counts
