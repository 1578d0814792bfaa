"""The ``--waveform`` TFLite file in the real client: MediaPipe Tasks' AudioClassifier.

MediaPipe reads the file's TFLite Model Metadata (AudioProperties, the labels as a
TENSOR_AXIS_LABELS file on the probability output) and runs the graph in its own TFLite
build. Checked here:

- the metadata, read back with MediaPipe's own generated schema module;
- AUDIO_CLIPS on the 300 FSDD test clips, each fed as the window ``dymn-tag`` scores (the
  clip centred in 1 s with the noise floor): top-1 agrees with ``dymn-tag`` on the log-mel
  file for >= 99 % of them, probabilities within 1e-3;
- ``max_results``, ``score_threshold``, category allow / deny lists as MediaPipe documents;
- AUDIO_STREAM on a long file made of several digits: the digits come out in order.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from waveform_exports import fsdd_split, fsdd_waveform_export

pytest.importorskip("torch")
mp_audio = pytest.importorskip("mediapipe.tasks.python.audio")

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def wave_tflite():
    return fsdd_waveform_export("tflite").path


@pytest.fixture(scope="module")
def logmel_tagger(fsdd_tflite):
    """dymn-tag's tagger on the log-mel TFLite file of the same model."""
    from dymn_edge.runtime.engines import load_engine
    from dymn_edge.runtime.tagger import Tagger

    return Tagger(load_engine(fsdd_tflite))


@pytest.fixture(scope="module")
def wave_tagger(wave_tflite):
    from dymn_edge.runtime.engines import load_engine
    from dymn_edge.runtime.tagger import Tagger

    return Tagger(load_engine(wave_tflite))


def _classifier(path, **options):
    from mediapipe.tasks.python.core.base_options import BaseOptions

    mode = options.pop("running_mode", mp_audio.RunningMode.AUDIO_CLIPS)
    opts = mp_audio.AudioClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                           running_mode=mode, **options)
    return mp_audio.AudioClassifier.create_from_options(opts)


def _audio(x: np.ndarray, rate: int = 32000):
    from mediapipe.tasks.python.components.containers.audio_data import AudioData

    return AudioData.create_from_array(np.asarray(x, np.float32), rate)


def _read(path) -> np.ndarray:
    """The clip as dymn-tag reads it (block reader, soxr to 32 kHz)."""
    from dymn_edge.runtime.tagger import iter_audio_blocks

    return np.concatenate(list(iter_audio_blocks(path, 32000)))


def _window(tagger, path) -> np.ndarray:
    """The 1 s window dymn-tag scores for a clip: centred in zeros (a clip over 1 s: its
    centre second), the noise floor added."""
    x, _ = tagger.prepare(_read(path), 0)
    return x[0]


def test_mediapipe_metadata_reads_back(wave_tflite):
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    from dymn_edge.export.mediapipe_metadata import MP_METADATA_NAME
    from dymn_edge.metadata import read_metadata, read_tflite_metadata_entries

    data = wave_tflite.read_bytes()
    entries = read_tflite_metadata_entries(data)
    assert "dymn_edge" in entries and read_metadata(wave_tflite).takes_waveform  # ours stays readable
    assert md.ModelMetadata.ModelMetadataBufferHasIdentifier(entries[MP_METADATA_NAME], 0)
    meta = md.ModelMetadataT.InitFromPackedBuf(bytearray(entries[MP_METADATA_NAME]), 0)
    assert meta.name and meta.description and meta.version and meta.license
    assert b"dymn-s" in meta.name and b"32000 Hz" in meta.description
    sub = meta.subgraphMetadata[0]
    (inp,) = sub.inputTensorMetadata
    assert inp.content.contentPropertiesType == md.ContentProperties.AudioProperties
    assert (inp.content.contentProperties.sampleRate, inp.content.contentProperties.channels) == (32000, 1)
    probs, emb = sub.outputTensorMetadata
    assert (probs.name, emb.name) == (b"probabilities", b"embedding")
    (labels,) = probs.associatedFiles
    assert labels.type == md.AssociatedFileType.TENSOR_AXIS_LABELS and labels.name == b"labels.txt"
    (dims,) = emb.associatedFiles  # named dimensions: MediaPipe's allow / deny lists need labels on every head
    assert dims.type == md.AssociatedFileType.TENSOR_AXIS_LABELS and dims.name == b"embedding_labels.txt"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read("labels.txt").decode().split() == DIGITS
        assert zf.read("embedding_labels.txt").decode().split() == [f"embedding_{i}" for i in range(384)]


def test_audio_clips_agree_with_dymn_tag(wave_tflite, logmel_tagger, wave_tagger):
    clips = fsdd_split("test")
    assert len(clips) >= 100
    top1_same, worst = 0, 0.0
    with _classifier(wave_tflite, max_results=-1) as clf:
        for path, _ in clips:
            (res,) = clf.classify(_audio(_window(wave_tagger, path)))
            head = res.classifications[0]
            assert head.head_name == "probabilities" and len(head.categories) == 10
            mp = np.zeros(10)
            for c in head.categories:
                mp[c.index] = c.score
                assert c.category_name == DIGITS[c.index]
            ours = logmel_tagger.score(_read(path), 0.0).probabilities  # = dymn-tag on a clip <= 1 s
            top1_same += int(np.argmax(mp) == np.argmax(ours))
            worst = max(worst, float(np.abs(mp - ours).max()))
    agreement = top1_same / len(clips)
    print(f"MediaPipe vs dymn-tag (log-mel file): top-1 agreement {agreement:.4f} on {len(clips)} "
          f"clips, max |p diff| {worst:.2e}")
    assert agreement >= 0.99
    assert worst <= 1e-3


def test_result_options_behave_as_documented(wave_tflite, wave_tagger):
    x = _audio(_window(wave_tagger, fsdd_split("test")[3][0]))
    with _classifier(wave_tflite, max_results=-1) as clf:
        full = clf.classify(x)[0].classifications[0].categories
    scores = [c.score for c in full]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1.0) < 1e-4  # softmax head
    names = [c.category_name for c in full]
    with _classifier(wave_tflite, max_results=3) as clf:
        top3 = clf.classify(x)[0].classifications[0].categories
    assert [c.category_name for c in top3] == names[:3]
    threshold = (full[1].score + full[2].score) / 2 if full[1].score > full[2].score else full[0].score
    with _classifier(wave_tflite, score_threshold=threshold) as clf:
        kept = clf.classify(x)[0].classifications[0].categories
    assert kept and all(c.score >= threshold for c in kept)
    assert [c.category_name for c in kept] == [c.category_name for c in full if c.score >= threshold]
    allow = [names[4], names[7]]
    with _classifier(wave_tflite, category_allowlist=allow) as clf:
        got = clf.classify(x)[0].classifications[0].categories
    assert [c.category_name for c in got] == [n for n in names if n in allow]
    with _classifier(wave_tflite, category_denylist=[names[0]]) as clf:
        got = clf.classify(x)[0].classifications[0].categories
    assert names[0] not in [c.category_name for c in got] and [c.category_name for c in got] == names[1:]


def test_audio_stream_gives_the_digits_in_order(tmp_path, wave_tflite, wave_tagger, logmel_tagger):
    """A long file of digits, one per second, streamed in 100 ms chunks: one result per second."""
    import soundfile as sf

    from dymn_edge.audio import read_audio

    picked, seen = [], set()
    for path, digit in fsdd_split("test")[7::11]:  # dymn-tag gets each of these right
        if digit not in seen and int(np.argmax(logmel_tagger.score(_read(path), 0.0).probabilities)) == digit:
            picked.append((path, digit))
            seen.add(digit)
        if len(picked) == 6:
            break
    assert len(picked) == 6
    long_file = tmp_path / "digits.wav"
    sf.write(long_file, np.concatenate([_window(wave_tagger, p) for p, _ in picked]), 32000)
    audio = read_audio(long_file, 32000)

    results = []
    with _classifier(wave_tflite, running_mode=mp_audio.RunningMode.AUDIO_STREAM, max_results=1,
                     result_callback=lambda r, t: results.append((t, r.classifications[0].categories[0]))) as clf:
        chunk = 3200
        for i in range(0, len(audio), chunk):
            clf.classify_async(_audio(audio[i:i + chunk]), i * 1000 // 32000)
    heard = [DIGITS.index(c.category_name) for _, c in sorted(results, key=lambda r: r[0])]
    assert heard == [d for _, d in picked]
