"""Bundled AudioSet labels, user label CSVs and name resolution."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import pytest

from dymn_edge.errors import LabelsError
from dymn_edge.labels import (
    Label,
    audioset_labels,
    generic_labels,
    read_labels_csv,
    resolve_label,
)


def test_audioset_labels() -> None:
    labels = audioset_labels()
    assert len(labels) == 527
    assert [lab.index for lab in labels] == list(range(527))
    assert labels[0] == Label(0, "/m/09x0r", "Speech")
    assert labels[1].display_name == "Male speech, man speaking"  # comma inside quotes
    assert labels[137] == Label(137, "/m/04rlf", "Music")
    assert labels[526] == Label(526, "/m/07hvw1", "Field recording")
    assert len({lab.mid for lab in labels}) == 527
    assert len({lab.display_name.lower() for lab in labels}) == 527
    assert audioset_labels() == labels  # cached, but callers get their own list
    assert audioset_labels() is not labels


def test_bundled_files_present() -> None:
    data = resources.files("dymn_edge").joinpath("data")
    with data.joinpath("class_labels_indices.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "mid", "display_name"]
    assert len(rows) == 528
    notice = data.joinpath("LABELS_LICENSE.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in notice and "Google" in notice


def test_label_is_frozen() -> None:
    lab = Label(0, None, "x")
    with pytest.raises(AttributeError):
        lab.index = 1  # type: ignore[misc]


def test_generic_labels() -> None:
    labels = generic_labels(3)
    assert [lab.display_name for lab in labels] == ["class_0", "class_1", "class_2"]
    assert all(lab.mid is None for lab in labels)
    assert generic_labels(0) == []


def _write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_user_csv(tmp_path: Path) -> None:
    path = _write(tmp_path, 'index,display_name\n1,one\n0,"zero, nil"\n2, two \n\n')
    labels = read_labels_csv(path)
    assert labels == [Label(0, None, "zero, nil"), Label(1, None, "one"), Label(2, None, "two")]
    with_mid = _write(tmp_path, "\ufeffmid,index,display_name\n/m/x,0,a\n,1,b\n", "m.csv")
    assert read_labels_csv(with_mid) == [Label(0, "/m/x", "a"), Label(1, None, "b")]


def test_read_fsdd_labels(fsdd_dir: Path) -> None:
    labels = read_labels_csv(fsdd_dir / "labels.csv")
    assert len(labels) == 10 and labels[0].display_name == "zero"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("idx,name\n0,a\n", "header"),
        ("index,display_name\n", "no rows"),
        ("index,display_name\n0,a\nx,b\n", "line 3: index 'x' is not an integer"),
        ("index,display_name\n0,a\n0,b\n", "line 3: index 0 repeats line 2"),
        ("index,display_name\n0,a\n2,b\n", "index 1 is missing"),
        ("index,display_name\n1,a\n", "index 0 is missing"),
        ("index,display_name\n0,a\n1,\n", "line 3: empty display_name"),
        ("index,display_name\n0,a,extra\n", "line 2: expected 2 fields"),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, fragment: str) -> None:
    path = _write(tmp_path, text, "bad_labels.csv")
    with pytest.raises(LabelsError) as info:
        read_labels_csv(path)
    msg = str(info.value)
    assert "bad_labels.csv" in msg and fragment in msg and "\n" not in msg


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="not found.*nothere.csv"):
        read_labels_csv(tmp_path / "nothere.csv")


def test_resolve_label() -> None:
    labels = audioset_labels()
    assert resolve_label(labels, "music").index == 137
    assert resolve_label(labels, " Speech ").index == 0
    assert resolve_label(labels, "/m/04rlf").display_name == "Music"
    assert resolve_label(labels, "male speech, MAN speaking").index == 1
    with pytest.raises(LabelsError) as info:
        resolve_label(labels, "Musik")
    assert "unknown label 'Musik'" in str(info.value)
    assert "Did you mean 'Music'" in str(info.value)
    with pytest.raises(LabelsError) as info:
        resolve_label(labels, "qqqqqqqqqqqq")
    assert "Did you mean" not in str(info.value)
