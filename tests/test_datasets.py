"""Dataset layouts are detected from their files; the FSDD recipe is the reference one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.datasets import Dataset, fsdd_eval_wave, load_dataset
from dymn_edge.errors import DymnEdgeError, LabelsError


def _wav(path: Path, n: int = 800, sr: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * np.sin(np.arange(n) / 5)).astype(np.float32), sr)
    return path


def test_fsdd_layout(fsdd_dir: Path) -> None:
    ds = load_dataset(fsdd_dir, split="test")
    assert isinstance(ds, Dataset) and ds.layout == "fsdd" and not ds.multilabel
    assert len(ds.clips) == 300 and len(ds.labels) == 10
    assert ds.labels[3].display_name == "three"
    assert ds.targets_onehot().sum(axis=0).tolist() == [30.0] * 10
    assert len(load_dataset(fsdd_dir, split="train")) == 2700
    with pytest.raises(DymnEdgeError, match="no clips in split 'dev'"):
        load_dataset(fsdd_dir, split="dev")


def test_fsdd_eval_wave_recipe(tmp_path: Path) -> None:
    short = fsdd_eval_wave(_wav(tmp_path / "short.wav", 4000))  # 0.5 s -> centred, padded
    assert short.shape == (32000,) and short.dtype == np.float32
    assert np.abs(short[:7000]).max() < 1e-3  # only the 1e-4 noise before the clip
    assert np.abs(short[8000:24000]).max() > 0.05
    again = fsdd_eval_wave(tmp_path / "short.wav")
    assert np.array_equal(short, again)  # noise seeded by the clip length: reproducible
    long = fsdd_eval_wave(_wav(tmp_path / "long.wav", 12000))  # 1.5 s -> centre crop
    assert long.shape == (32000,)
    with pytest.raises(DymnEdgeError, match="8000 Hz"):
        fsdd_eval_wave(_wav(tmp_path / "wrong.wav", 800, sr=16000))


def test_fsdd_eval_wave_noise_seed(tmp_path: Path) -> None:
    path = tmp_path / "z.wav"
    sf.write(str(path), np.zeros(4000, dtype=np.float32), 8000)
    expected = np.random.default_rng(4000).normal(0.0, 1e-4, 32000).astype(np.float32)
    assert np.allclose(fsdd_eval_wave(path), expected, atol=1e-9)


def test_esc50_layout(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-1-A-0.wav,1,0,dog,True,1,A\n1-2-A-1.wav,1,1,rooster,False,2,A\n"
        "2-3-A-0.wav,2,0,dog,True,3,A\n")
    for name in ("1-1-A-0.wav", "1-2-A-1.wav", "2-3-A-0.wav"):
        _wav(tmp_path / "audio" / name)
    ds = load_dataset(tmp_path)
    assert ds.layout == "esc50" and len(ds) == 3 and ds.labels[1].display_name == "rooster"
    fold1 = load_dataset(tmp_path, split=1)
    assert [c.targets for c in fold1.clips] == [[0], [1]]


def test_audioset_csv_layout(tmp_path: Path) -> None:
    (tmp_path / "eval_segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:25 2017\n"
        "# num_ytids=2, num_segs=2, num_unique_labels=3, num_positive_labels=3\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_"\n'
        '--BfvyPmVMo, 20.000, 30.000, "/m/09x0r"\n'
        'missing0000, 0.000, 10.000, "/m/09x0r"\n')
    _wav(tmp_path / "--4gqARaEJE_0.000.wav")
    _wav(tmp_path / "--BfvyPmVMo.wav")
    ds = load_dataset(tmp_path)
    assert ds.layout == "audioset" and ds.multilabel and len(ds.labels) == 527
    assert ds.clips[1].targets == [0]  # /m/09x0r = Speech
    assert len(ds.clips[0].targets) == 2 and ds.meta["missing_clips"] == 1
    (tmp_path / "eval_segments.csv").write_text(
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--BfvyPmVMo, 20.000, 30.000, "/m/nonsense"\n')
    with pytest.raises(LabelsError, match="/m/nonsense"):
        load_dataset(tmp_path)


def test_generic_layout(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "sub" / "b.wav")
    (tmp_path / "labels.csv").write_text("path,label\na.wav,Speech;/m/068hy\nsub/b.wav,0\n")
    ds = load_dataset(tmp_path)
    assert ds.layout == "generic" and ds.multilabel and len(ds.labels) == 527
    assert ds.clips[1].path == tmp_path / "sub" / "b.wav" and ds.clips[1].targets == [0]
    (tmp_path / "classes.csv").write_text("index,display_name\n0,cat\n1,dog\n")
    (tmp_path / "labels.csv").write_text("path,label\na.wav,dog\nsub/b.wav,cat\n")
    ds = load_dataset(tmp_path)
    assert [c.targets for c in ds.clips] == [[1], [0]] and not ds.multilabel
    (tmp_path / "labels.csv").write_text("path,label\na.wav,dgo\n")
    with pytest.raises(LabelsError, match="unknown label 'dgo'"):
        load_dataset(tmp_path)


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DymnEdgeError, match="unknown dataset layout"):
        load_dataset(tmp_path)
    with pytest.raises(DymnEdgeError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_layouts_table_drives_detection_and_reading(fsdd_dir: Path, tmp_path: Path) -> None:
    from dymn_edge.datasets import LAYOUTS, detect_layout

    assert [lay.name for lay in LAYOUTS] == ["fsdd", "esc50", "audioset", "generic"]
    lay, _ = detect_layout(fsdd_dir)
    assert lay.name == "fsdd" and lay.eval_split == "test"
    ds = load_dataset(fsdd_dir, split="test")
    clip = ds.clips[0]
    np.testing.assert_array_equal(ds.read(clip), fsdd_eval_wave(clip.path))  # the reference recipe
    (tmp_path / "labels.csv").write_text("path,label\na.wav,Speech\n")
    _wav(tmp_path / "a.wav", sr=32000)
    generic = load_dataset(tmp_path)
    assert detect_layout(tmp_path)[0].name == "generic" and generic.read(generic.clips[0]).shape == (800,)
    with pytest.raises(DymnEdgeError, match="--split applies to FSDD and ESC-50 layouts only"):
        load_dataset(tmp_path, split="1")
    assert detect_layout(tmp_path / "a.wav") is None


def test_one_list_of_audio_suffixes_for_calibration_and_dymn_tag(tmp_path: Path) -> None:
    from dymn_edge.datasets import AUDIO_SUFFIXES, find_audio
    from dymn_edge.runtime.archive import expand_inputs

    names = ["a.wav", "b.FLAC", "c.aiff", "d.opus", "sub/e.wv", "notes.txt"]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"")
    found = find_audio(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == names[:5]
    assert expand_inputs([tmp_path]) == found  # dymn-tag DIR walks the same files
    assert {".aiff", ".opus", ".wv"} <= set(AUDIO_SUFFIXES)
