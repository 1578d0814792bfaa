"""The self-description that every exported model file carries (torch-free).

``dymn-export`` writes one JSON document under the key :data:`METADATA_KEY`: in ONNX as a
``metadata_props`` entry, in TFLite as a named entry of the flatbuffer's ``metadata`` table.
The runtime needs nothing else to turn audio into labelled scores.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import dymn_edge
from dymn_edge.errors import DymnEdgeError, MetadataError, one_line
from dymn_edge.formats import FORMATS, format_of_bytes, format_spec
from dymn_edge.frontend import frames_for_seconds
from dymn_edge.ort import ort_session
from dymn_edge.registry import FrontendConfig

METADATA_KEY = "dymn_edge"
#: The newest schema this dymn-edge reads. Log-mel files are written as 1 (readable by every
#: release); waveform-input files as 2, so an older runtime refuses them with "upgrade
#: dymn-edge" instead of feeding them log-mels.
SCHEMA_VERSION = 2
WAVEFORM_SCHEMA_VERSION = 2


@dataclass
class TensorInfo:
    """One graph input or output: name, layout and, for integer tensors, its quantization."""

    name: str
    shape: list[int | str]  # symbolic dims as strings, e.g. ["batch", 1, 128, "frames"]
    dtype: str = "float32"
    scale: float | None = None  # set only for quantized (int8/uint8) tensors
    zero_point: int | None = None


@dataclass
class ModelMetadata:
    """Everything the runtime reads from a model file."""

    model_name: str
    arch: str
    width: float
    num_classes: int
    labels: list[dict[str, Any]]  # [{"index": i, "mid": str|None, "display_name": str}]
    frontend: dict[str, Any]
    window_seconds: float  # the input length the file was exported (and validated) for
    dynamic_batch: bool
    dynamic_time: bool
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]  # logits first, then embedding
    format: str  # "onnx" | "tflite"
    precision: str  # "fp32" | "fp16" | "int8"
    quantization: str  # human-readable scheme, "none" for fp32
    strategy: str  # dynamic-conv export strategy
    output_activation: str = "sigmoid"  # how logits become probabilities (softmax for 1-of-N heads)
    untrained: bool = False  # True for --random-init structural models
    weights_sha256: str | None = None
    weights_source: str | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = 1  # WAVEFORM_SCHEMA_VERSION for input_kind "waveform"
    #: Short id of how the file was made smaller: none, fp16, int8_dynamic, int8_weight_only,
    #: int8_static_qdq, full_int8 ("int8" alone hides whether compute is integer or float).
    quantization_scheme: str | None = None
    #: Calibrated int8 only: {"source": folder name, "count": clips used, "method": range
    #: method, "description": which clips}; None for files made without calibration data.
    calibration: dict[str, Any] | None = None
    #: What the graph takes: "log_mel" (B, 1, n_mels, T) -> (logits, embedding), or "waveform"
    #: (B, N) samples at frontend.sample_rate -> (probabilities, embedding): the frontend and the
    #: output activation are inside the graph (``dymn-export --waveform``, schema 2).
    input_kind: str = "log_mel"

    @property
    def task(self) -> str:
        """What the scores mean: one class per clip (softmax) or independent tags (sigmoid)."""
        return "1-of-N classification" if self.output_activation == "softmax" else "multi-label tagging"

    @property
    def takes_waveform(self) -> bool:
        """The frontend and the activation are in the graph: feed samples, read probabilities."""
        return self.input_kind == "waveform"

    @property
    def frontend_config(self) -> FrontendConfig:
        return FrontendConfig.from_dict(self.frontend)

    @property
    def window_frames(self) -> int:
        return frames_for_seconds(self.window_seconds, self.frontend_config)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "model file") -> "ModelMetadata":
        try:
            d = json.loads(text)
            d["inputs"] = [TensorInfo(**t) for t in d["inputs"]]
            d["outputs"] = [TensorInfo(**t) for t in d["outputs"]]
            names = set(cls.__dataclass_fields__)
            unknown = set(d) - names
            for k in unknown:
                d.pop(k)
            meta = cls(**d)
        except (ValueError, KeyError, TypeError) as exc:
            raise MetadataError(f"{source}: dymn-edge metadata is malformed ({exc})") from exc
        if meta.schema_version > SCHEMA_VERSION:
            raise MetadataError(
                f"{source}: metadata schema {meta.schema_version} is newer than this dymn-edge "
                f"understands ({SCHEMA_VERSION}); upgrade dymn-edge"
            )
        return meta


_ABS_PATH = re.compile(r"(?<![\w.:/])(?:[A-Za-z]:)?[/\\](?:[^\s/\\()'\",;]+[/\\])+([^\s/\\()'\",;]+)")


def scrub_paths(value: Any) -> Any:
    """``value`` with every absolute path cut to its last part (recursively in dicts/lists).

    A model file travels: the export machine's folders (user names, home folders) are not
    the file's business; the file name is enough to say what was used.
    """
    if isinstance(value, str):
        return _ABS_PATH.sub(r"\1", value)
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_paths(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# Reading from files, torch-free (ONNX via protobuf-free scan is not reliable, so onnx or
# onnxruntime is used there; TFLite is parsed directly from its flatbuffer).


def detect_format(path: str | Path) -> str:
    """The format's name ('onnx', 'tflite', ...) from the file's bytes (never from its name).

    Each row of :data:`dymn_edge.formats.FORMATS` says how its files begin (``magic``).
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise MetadataError(f"{p}: cannot read model file ({exc.strerror})") from exc
    spec = format_of_bytes(head)
    if spec is None:
        known = " or ".join(spec.title for spec in FORMATS.values())
        raise MetadataError(f"{p}: not an {known} model file")
    return spec.format.value


def _fb_table_field(buf: bytes, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the flatbuffer table at ``table``."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vt_size:
        return None
    off = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + off if off else None


def _fb_deref(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _fb_vector(buf: bytes, pos: int) -> tuple[int, int]:
    start = _fb_deref(buf, pos)
    return start + 4, struct.unpack_from("<I", buf, start)[0]


def read_tflite_metadata_entries(data: bytes) -> dict[str, bytes]:
    """Named metadata buffers of a TFLite flatbuffer (schema: Model.metadata, field 6)."""
    root = _fb_deref(data, 0)
    meta_field = _fb_table_field(data, root, 6)
    buffers_field = _fb_table_field(data, root, 4)
    if meta_field is None or buffers_field is None:
        return {}
    buf_start, n_bufs = _fb_vector(data, buffers_field)
    m_start, n_meta = _fb_vector(data, meta_field)
    out: dict[str, bytes] = {}
    for i in range(n_meta):
        entry = _fb_deref(data, m_start + 4 * i)
        name_pos = _fb_table_field(data, entry, 0)
        buf_pos = _fb_table_field(data, entry, 1)
        if name_pos is None or buf_pos is None:
            continue
        s_start = _fb_deref(data, name_pos)
        s_len = struct.unpack_from("<I", data, s_start)[0]
        name = data[s_start + 4 : s_start + 4 + s_len].decode("utf-8", "replace")
        b_index = struct.unpack_from("<I", data, buf_pos)[0]
        if b_index >= n_bufs:
            continue
        buffer = _fb_deref(data, buf_start + 4 * b_index)
        data_pos = _fb_table_field(data, buffer, 0)
        if data_pos is not None:
            d_start, d_len = _fb_vector(data, data_pos)
            out[name] = bytes(data[d_start : d_start + d_len])
            continue
        off_pos = _fb_table_field(data, buffer, 1)
        size_pos = _fb_table_field(data, buffer, 2)
        if off_pos is not None and size_pos is not None:  # large-model layout
            off = struct.unpack_from("<Q", data, off_pos)[0]
            size = struct.unpack_from("<Q", data, size_pos)[0]
            out[name] = bytes(data[off : off + size])
    return out


def _read_onnx_metadata_props(path: Path) -> dict[str, str]:
    try:
        return dict(ort_session(path).get_modelmeta().custom_metadata_map)
    except ImportError:
        pass
    except Exception as exc:  # ORT raises its own types for a truncated / corrupt file
        fused = _fused_file_props(path)  # a file ORT cannot run, but a dymn-edge one
        if fused is not None:
            return fused
        raise MetadataError(f"{path}: not a readable ONNX file ({one_line(exc)})") from exc
    try:
        import onnx  # noqa: PLC0415  (optional: onnxruntime is the usual reader)

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    except ImportError as exc:
        raise MetadataError(
            f"{path}: reading ONNX metadata needs onnxruntime: pip install 'dymn-edge[onnx]'"
        ) from exc


def _fused_file_props(path: Path) -> dict[str, str] | None:
    """The metadata of a ``--strategy fused`` file, whose operators ONNX Runtime has no kernels for."""
    # lazy: the wire-format reader lives in the runtime package, which imports this module
    from dymn_edge.runtime.onnx_props import read_onnx_metadata_props  # noqa: PLC0415

    try:
        props = read_onnx_metadata_props(path)
        strategy = json.loads(props.get(METADATA_KEY, "{}")).get("strategy")
    except (DymnEdgeError, ValueError, AttributeError):
        return None
    return props if strategy == "fused" else None


def read_onnx_metadata(path: Path) -> str | None:
    """The dymn-edge JSON of an ONNX file (``metadata_props``), None when it has none."""
    return _read_onnx_metadata_props(path).get(METADATA_KEY)


def read_tflite_metadata(path: Path) -> bytes | None:
    """The dymn-edge JSON of a TFLite file (a named metadata buffer), None when it has none."""
    try:
        entries = read_tflite_metadata_entries(path.read_bytes())
    except struct.error as exc:
        raise MetadataError(f"{path}: corrupt TFLite flatbuffer ({exc})") from exc
    return entries.get(METADATA_KEY)


def read_metadata(path: str | Path) -> ModelMetadata:
    """The dymn-edge metadata of an exported model file (any format of the table)."""
    p = Path(path)
    if p.is_dir():
        raise MetadataError(f"{p}: is a folder, not a model file")
    if not p.is_file():
        raise MetadataError(f"{p}: model file not found")
    fmt = detect_format(p)
    raw = format_spec(fmt).call("metadata_reader", p)
    if raw is None:
        raise MetadataError(
            f"{p}: no dymn-edge metadata in this {fmt} file; export it with dymn-export "
            "(files from other tools do not say their labels, frontend and window)"
        )
    return ModelMetadata.from_json(raw, source=str(p))


def installed_versions(dists: Iterable[str]) -> dict[str, str]:
    """Installed versions of the distributions ``dists`` (absent ones left out).

    What a file or a benchmark records about the tools that made it.
    """
    out = {}
    for dist in dists:
        if dist == "dymn-edge":  # one version source, also in a never-installed source tree
            out[dist] = dymn_edge.__version__
            continue
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
