"""The head's activation is part of the export contract: explicit, never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dymn_edge.errors import ExportError


def test_audioset_head_defaults_to_sigmoid_others_must_say() -> None:
    from dymn_edge.export.config import ExportConfig

    cfg = ExportConfig(random_init=True)
    assert cfg.activation_for(527) == "sigmoid"
    with pytest.raises(ExportError, match="--activation softmax .* --activation sigmoid"):
        cfg.activation_for(10)
    assert ExportConfig(output_activation="Softmax").activation_for(10) == "softmax"
    assert ExportConfig(output_activation="sigmoid").activation_for(10) == "sigmoid"
    assert ExportConfig(output_activation="softmax").activation_for(527) == "softmax"
    with pytest.raises(ExportError, match="--activation must be sigmoid or softmax"):
        ExportConfig(output_activation="relu")


def test_fsdd_checkpoint_without_activation_fails_before_converting(
        fsdd_weights: Path, fsdd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Known weights get no special treatment: the 10-class FSDD head needs the flag too."""
    from dymn_edge.export.cli import main

    out = tmp_path / "fsdd.onnx"
    rc = main(["--model", "dymn-s", "--weights", str(fsdd_weights), "--labels",
               str(fsdd_dir / "labels.csv"), "--format", "onnx", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "--activation" in err[0] and "10-class" in err[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fsdd_fixture_file_is_softmax(fsdd_export) -> None:
    from dymn_edge.metadata import read_metadata

    assert read_metadata(fsdd_export("onnx").path).output_activation == "softmax"
