"""TFLite Model Metadata for MediaPipe Tasks' AudioClassifier, written without extra packages.

MediaPipe (Android, iOS, web, Python) reads a model's description from the flatbuffer
``metadata`` entry ``TFLITE_METADATA`` (file identifier ``M001``, schema
``metadata_schema.fbs``) and its associated files from a ZIP archive appended to the model
(uncompressed entries, as the TFLite metadata populator writes them). AudioClassifier needs
the input's AudioProperties (sample rate, channels) and takes each output tensor as one
classification head, with class names from a TENSOR_AXIS_LABELS file.

Why a writer of our own: ``mediapipe`` 1.2's ``metadata_writers`` do not import
(``mediapipe.tasks.cc`` missing), ``tflite-support`` pins protobuf 3.20 (which breaks onnx in
the same environment), and taking the generated schema module from ``mediapipe`` would make
every export install mediapipe and OpenCV. The tables needed here are five, built with the
``flatbuffers`` package that ai-edge-litert already brings; the tests read the result back
with MediaPipe's own generated schema module and run it in MediaPipe's AudioClassifier.

MediaPipe applies category allow / deny lists to every head and refuses them when a head has
no labels, so the embedding output gets a labels file too: its dimensions named
``embedding_0 ..`` (never in an allow list, so an allow list of class names leaves that head
empty, as it should).

The dymn-edge metadata entry stays next to it (the runtime reads that one).
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["EMBEDDING_LABELS_FILE", "LABELS_FILE", "MP_METADATA_NAME", "MediaPipeAudioInfo",
           "add_mediapipe_metadata"]

MP_METADATA_NAME = "TFLITE_METADATA"
MP_FILE_IDENTIFIER = b"M001"
#: AudioProperties came with metadata schema 1.3.0: readers older than that must refuse the file.
MIN_PARSER_VERSION = "1.3.0"
LABELS_FILE = "labels.txt"
EMBEDDING_LABELS_FILE = "embedding_labels.txt"

# metadata_schema.fbs: ContentProperties union member, AssociatedFileType enum value
_AUDIO_PROPERTIES = 4
_TENSOR_AXIS_LABELS = 2


@dataclass(frozen=True)
class MediaPipeAudioInfo:
    """What the MediaPipe metadata says about one waveform-in model."""

    name: str
    description: str
    version: str
    license: str
    author: str
    sample_rate: int
    channels: int
    labels: tuple[str, ...]  # display names in output order
    input_name: str = "waveform"
    probabilities_name: str = "probabilities"
    embedding_name: str = "embedding"


def _metadata_buffer(info: MediaPipeAudioInfo, output_order: list[str]) -> bytes:
    """The ``M001`` flatbuffer (ModelMetadata) for ``info``; outputs described in graph order."""
    import flatbuffers  # noqa: PLC0415 (comes with ai-edge-litert)

    b = flatbuffers.Builder(1024)

    def table(fields: list[tuple[str, int, object]]) -> int:
        """One table: fields as (kind, slot, value); strings / offsets created beforehand."""
        b.StartObject(max(slot for _, slot, _ in fields) + 1)
        for kind, slot, value in fields:
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "u32":
                b.PrependUint32Slot(slot, value, 0)
            elif kind == "u8":
                b.PrependUint8Slot(slot, value, 0)
            elif kind == "i8":
                b.PrependInt8Slot(slot, value, 0)
        return b.EndObject()

    def vector(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    s = b.CreateString
    # input: the waveform, AudioProperties (sample_rate: slot 0, channels: slot 1)
    audio = table([("u32", 0, info.sample_rate), ("u32", 1, info.channels)])
    content = table([("u8", 0, _AUDIO_PROPERTIES), ("off", 1, audio)])  # Content: type, value
    in_name = s(info.input_name)
    in_desc = s(f"Mono waveform, float32 in [-1, 1], {info.sample_rate} Hz.")
    tensor_in = table([("off", 0, in_name), ("off", 1, in_desc), ("off", 3, content)])
    # outputs: the class probabilities (with the labels file) and the embedding
    outs = []
    for name in output_order:
        probs = name == info.probabilities_name  # strings created in the same order either way
        file_name = s(LABELS_FILE if probs else EMBEDDING_LABELS_FILE)
        file_desc = s("Class names, one per line, in output order." if probs
                      else "Names of the embedding's dimensions (not classes).")
        labels = table([("off", 0, file_name), ("off", 1, file_desc), ("i8", 2, _TENSOR_AXIS_LABELS)])
        files = vector([labels])
        t_name = s(name)
        t_desc = s("Class probabilities (the activation the head was trained with)." if probs
                   else "Embedding: the pooled features before the classifier (not class scores).")
        outs.append(table([("off", 0, t_name), ("off", 1, t_desc), ("off", 6, files)]))
    ins_vec = vector([tensor_in])
    outs_vec = vector(outs)
    sub = table([("off", 2, ins_vec), ("off", 3, outs_vec)])
    subs = vector([sub])
    fields = [("off", 0, s(info.name)), ("off", 1, s(info.description)), ("off", 2, s(info.version)),
              ("off", 3, subs), ("off", 4, s(info.author)), ("off", 5, s(info.license)),
              ("off", 7, s(MIN_PARSER_VERSION))]
    root = table(fields)
    b.Finish(root, file_identifier=MP_FILE_IDENTIFIER)
    return bytes(b.Output())


def _outputs(data: bytes) -> list[tuple[str, int]]:
    """(signature name, last dimension) of subgraph 0's outputs, in the subgraph's output order."""
    from ai_edge_litert import schema_py_generated as fb  # noqa: PLC0415

    model = fb.Model.GetRootAs(data, 0)
    sub = model.Subgraphs(0)
    by_index: dict[int, str] = {}
    if model.SignatureDefsLength():
        sig = model.SignatureDefs(0)
        for i in range(sig.OutputsLength()):
            o = sig.Outputs(i)
            by_index[o.TensorIndex()] = o.Name().decode()
    out = []
    for i in range(sub.OutputsLength()):
        t = sub.Outputs(i)
        tensor = sub.Tensors(t)
        out.append((by_index.get(t) or tensor.Name().decode(), int(tensor.Shape(tensor.ShapeLength() - 1))))
    return out


def add_mediapipe_metadata(data: bytes, info: MediaPipeAudioInfo) -> bytes:
    """``data`` (a TFLite flatbuffer, any old ZIP tail ignored) with MediaPipe metadata + labels ZIP."""
    from dymn_edge.export.tflite_export import add_tflite_metadata  # noqa: PLC0415  (cycle: tflite_export imports this module)

    outputs = _outputs(data)
    order = [name for name, _ in outputs]
    if info.probabilities_name not in order:
        raise ValueError(f"the graph has no output '{info.probabilities_name}' (outputs: {order})")
    meta = _metadata_buffer(info, order)
    model = add_tflite_metadata(data, MP_METADATA_NAME, meta)  # repacking drops an old ZIP tail
    buf = io.BytesIO()
    buf.write(model)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(LABELS_FILE, "\n".join(info.labels) + "\n")
        dims = next((n for name, n in outputs if name == info.embedding_name), 0)
        zf.writestr(EMBEDDING_LABELS_FILE, "".join(f"embedding_{i}\n" for i in range(dims)))
    return buf.getvalue()
