"""The export cache: a hit needs the same key, and any exporter source change misses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dymn_edge.benchmarks import export_cache as ec
from dymn_edge.benchmarks.config import static_partner


def _key(**kw) -> dict:
    base = dict(model="dymn-s", fmt="onnx", precision="fp32", weights=None, window_s=1.0)
    return ec.cache_key(**{**base, **kw})


def _store(root: Path, key: dict) -> Path:
    d = ec.entry_dir(root, key)
    d.mkdir(parents=True)
    f = d / "dymn-s_onnx_fp32.onnx"
    f.write_bytes(b"model bytes")
    ec.store(root, key, {"name": "onnx:fp32", "status": "validated", "path": str(f)})
    return f


def test_hit_needs_the_same_key(tmp_path: Path) -> None:
    key = _key()
    f = _store(tmp_path, key)
    row = ec.lookup(tmp_path, key)
    assert row is not None and row["path"] == str(f) and row["status"] == "validated"
    assert key["weights"] == "random-init seed 0" and key["versions"]["dymn-edge"]
    for other in (_key(precision="int8"), _key(window_s=10.0), _key(model="mn-s"),
                  _key(strategy="static_k"), _key(layout="channels_last"),
                  _key(activation="softmax"), _key(weights=__file__)):
        assert other != key and ec.lookup(tmp_path, other) is None
    assert _key(weights=__file__)["weights"].startswith("sha256:")
    f.write_bytes(b"truncated")  # a file changed behind the cache's back is not re-used
    assert ec.lookup(tmp_path, key) is None


def test_exporter_source_change_invalidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies of the real exporter sources: editing one byte of the patcher changes the key."""
    real = {pkg: ec._package_dir(pkg) for pkg in ("dymn_edge.models", "dymn_edge.export")}
    assert (real["dymn_edge.models"] / "patcher.py").is_file()
    assert (real["dymn_edge.export"] / "formats.py").is_file()
    copies = {}
    for pkg, folder in real.items():
        copies[pkg] = tmp_path / pkg
        copies[pkg].mkdir()
        for f in folder.glob("*.py"):
            shutil.copy(f, copies[pkg] / f.name)
    monkeypatch.setattr(ec, "_package_dir", lambda pkg: copies[pkg])
    ec.exporter_source_hash.cache_clear()
    before = ec.exporter_source_hash()
    root = tmp_path / "cache"
    key = _key()
    _store(root, key)
    assert ec.lookup(root, key) is not None
    patcher = copies["dymn_edge.models"] / "patcher.py"
    patcher.write_text(patcher.read_text() + "\n# changed\n")
    ec.exporter_source_hash.cache_clear()
    try:
        assert ec.exporter_source_hash() != before
        assert ec.lookup(root, _key()) is None
    finally:
        ec.exporter_source_hash.cache_clear()


def test_static_partner_from_the_registry() -> None:
    assert static_partner("dymn-s") == "mn-s" and static_partner("dymn04_as") == "mn-s"
    assert static_partner("dymn-m") == "mn-m"
    assert static_partner("dymn-l") == "mn-20" and static_partner("mn-s") is None  # same width 2.0


def test_calibration_enters_the_key(tmp_path: Path) -> None:
    """A calibrated int8 file depends on its audio and recipe: a new, changed or removed clip,
    another clip count or another recipe (e.g. 8-bit weights) is another entry."""
    import os

    import numpy as np
    import soundfile as sf

    from dymn_edge.benchmarks.artifacts import quantization_for as _quantization
    from dymn_edge.benchmarks.config import BenchConfig
    from dymn_edge.errors import DymnEdgeError

    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", np.zeros(1600, np.float32), 16000)
    (audio / "notes.txt").write_text("not audio")
    recipe = {"scheme": "static_qdq", "reduce_range": True}
    cal = ec.calibration_id(audio, 64, recipe)
    key = _key(precision="static_int8", calibration=cal)
    root = tmp_path / "cache"
    _store(root, key)
    assert ec.lookup(root, key) is not None
    assert ec.lookup(root, _key(precision="static_int8", calibration=ec.calibration_id(audio, 64, recipe))) is not None
    (audio / "notes.txt").write_text("still not audio")  # only audio files count
    assert ec.calibration_id(audio, 64, recipe) == cal
    others = [ec.calibration_id(audio, 32, recipe),
              ec.calibration_id(audio, 64, {**recipe, "reduce_range": False})]
    sf.write(audio / "b.flac", np.zeros(1600, np.float32), 16000)
    others.append(ec.calibration_id(audio, 64, recipe))
    (audio / "b.flac").unlink()
    st = (audio / "a.wav").stat()
    os.utime(audio / "a.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the clip was edited
    others.append(ec.calibration_id(audio, 64, recipe))
    for c in others:
        assert c != cal and ec.lookup(root, _key(precision="static_int8", calibration=c)) is None
    assert _key()["calibration"] is None  # uncalibrated variants: no audio in the key
    # the runner's calibrated rows: scheme per variant, calibration audio required
    assert _quantization("onnx:static_int8").scheme.value == "static_qdq"
    assert _quantization("tflite:full_int8").activation_type == "int8"
    assert _quantization("onnx:int8") is None
    with pytest.raises(DymnEdgeError, match="--calibration"):
        BenchConfig(formats=["onnx:fp32", "onnx:static_int8"])
    assert BenchConfig(formats=["tflite:full_int8"], calibration=str(audio)).formats == ["tflite:full_int8"]
