"""Structure the code keeps: short functions, and one formats table every consumer asks.

(a) No function of the package is over 60 lines (a long function is several steps that
want names). (b) Adding a format is one row of :data:`dymn_edge.formats.FORMATS`: every row
fills every column, its function columns resolve, and the consumers (the export CLI, the
export config, the exporter, the file reader, the benchmark) dispatch through the table
instead of branching on a format name.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from dymn_edge.errors import ExportError
from dymn_edge.formats import ARGUMENTS, FORMATS, Format, FormatSpec, Precision, int8_variants, iter_variants

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def _long_functions(folder: str) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


@pytest.mark.parametrize("folder", ["dymn_edge", "export", "benchmarks", "runtime"])
def test_no_function_over_60_lines(folder: str) -> None:
    assert (ROOT / folder).is_dir()
    long = _long_functions(folder)
    assert not long, "functions over 60 lines (split them into named steps):\n" + "\n".join(long)


def test_the_size_check_sees_a_long_function(tmp_path: Path, monkeypatch) -> None:
    """The walk counts nested and method definitions, so the check above can fail."""
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"class C:\n    def f(self):\n{body}\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _long_functions("pkg") == ["pkg/m.py:2 f (61 lines)"]


# ------------------------------------------------------------------------------------------
# (b) the formats table

FUNCTION_COLUMNS = ("writer", "quantizer", "io_reader", "metadata_writer", "metadata_reader", "op_counter")


@pytest.mark.parametrize("fmt", list(Format))
def test_every_row_fills_every_column(fmt: Format) -> None:
    spec = FORMATS[fmt]
    assert spec.format is fmt and spec.suffix.startswith(".") and spec.title
    for f in dataclasses.fields(FormatSpec):
        value = getattr(spec, f.name)
        if f.name not in ("delegate_report", "help"):
            assert value is not None and value != "" and value != (), f"{fmt.value}: {f.name} empty"
    for column in FUNCTION_COLUMNS + (("delegate_report",) if spec.delegate_report else ()):
        assert callable(spec.function(column)), f"{fmt.value}: {column} does not resolve"
    assert Precision.FP32 in spec.precisions and set(spec.tolerance) <= {p.value for p in spec.precisions}
    # every precision and named int8 recipe the row offers is an argument it takes
    offered = {p.value for p in spec.precisions if p is not Precision.FP32} | {v.name for v in spec.int8_variants}
    assert offered <= spec.arguments <= set(ARGUMENTS)
    recipes = [spec.int8_default, spec.int8_calibrated, *(v.recipe for v in spec.int8_variants)]
    assert all(r["scheme"] in spec.schemes for r in recipes)


def test_magic_bytes_pick_one_row() -> None:
    heads = {Format.ONNX: b"\x08\x08\x12\x07pytorch", Format.TFLITE: b"\x1c\x00\x00\x00TFL3"}
    assert set(heads) == set(Format)  # a new format brings its file's first bytes here
    for fmt, head in heads.items():
        assert [s.format for s in FORMATS.values() if s.magic(head)] == [fmt]
    assert not any(s.magic(b"RIFF\x00\x00\x00\x00") for s in FORMATS.values())


def test_cli_flags_and_help_come_from_the_table() -> None:
    from dymn_edge.export.cli import EPILOG, build_parser

    parser = build_parser()
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for spec in FORMATS.values():
        for p in spec.precisions:
            if p is not Precision.FP32:
                assert f"--{p.value}" in flags and spec.format.value in flags[f"--{p.value}"].help
        for v in spec.int8_variants:
            flag = f"--{v.name.replace('_', '-')}"
            assert flag in flags and flags[flag].const == v.name and v.help in flags[flag].help
        assert f"  {spec.format.value} " in EPILOG
        assert spec.format.value in flags["--format"].help


@pytest.mark.parametrize("fmt", list(Format))
def test_one_check_rejects_what_a_format_does_not_take(fmt: Format, tmp_path: Path) -> None:
    from dymn_edge.export.config import ExportConfig, QuantizationConfig

    spec = FORMATS[fmt]
    named = {v.name: v for _, v in int8_variants().values()}
    setting = {
        "fp16": {"precision": "fp16"},
        "int8": {"precision": "int8"},
        "quant_report": {"precision": "int8", "calibration": tmp_path,
                         "quantization": QuantizationConfig(scheme="static_qdq", report=True)},
        "waveform": {"waveform": True},
        "strategy": {"strategy": "static_k"},
        "calibration": {"precision": "int8", "calibration": tmp_path},
        **{name: {"precision": "int8", "calibration": tmp_path,
                  "quantization": QuantizationConfig(**v.recipe)} for name, v in named.items()},
    }
    assert set(setting) == set(ARGUMENTS)  # a new argument says how a config sets it
    for arg in set(ARGUMENTS) - spec.arguments:
        with pytest.raises(ExportError, match=f"{fmt.value} does not (take|support)"):
            ExportConfig(model="dymn-s", random_init=True, format=fmt, output=f"{tmp_path}/",
                         **setting[arg])


def test_benchmark_variants_come_from_the_table() -> None:
    from dymn_edge.benchmarks.config import CALIBRATED, all_variants, normalize_variant

    assert all_variants() == [f"{f.value}:{p.value}" for f, p in iter_variants()]
    assert set(CALIBRATED) == set(int8_variants())
    for v in [*all_variants(), *CALIBRATED]:
        assert normalize_variant(v.upper()) == v


#: modules that serve every format through the table: none compares with a format's name,
#: suffix or enum member, or keys a dict by one (that would be a second table)
CONSUMERS = ("export/api.py", "export/config.py", "export/cli.py", "benchmarks/config.py",
             "benchmarks/artifacts.py", "benchmarks/graph_ops.py", "benchmarks/runner.py",
             "dymn_edge/metadata.py")


def _format_literals(tree: ast.AST) -> list[str]:
    names = {f.value for f in Format} | {s.suffix for s in FORMATS.values()} | set(int8_variants())
    members = {f.name for f in Format}

    def is_format(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value.lower() in names
        if isinstance(node, ast.Attribute):
            return node.attr in members and isinstance(node.value, ast.Name) and node.value.id == "Format"
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_format(e) for e in node.elts)
        return False

    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_format(x) for x in [node.left, *node.comparators]):
            hits.append(f"line {node.lineno}: comparison with a format")
        elif isinstance(node, ast.Dict) and any(k is not None and is_format(k) for k in node.keys):
            hits.append(f"line {node.lineno}: dict keyed by a format")
    return hits


@pytest.mark.parametrize("module", CONSUMERS)
def test_consumers_do_not_branch_on_a_format(module: str) -> None:
    hits = _format_literals(ast.parse((ROOT / module).read_text()))
    assert not hits, f"{module} branches on a format instead of asking FORMATS: {hits}"


def test_the_branch_check_sees_a_branch() -> None:
    code = ('if fmt == "onnx": pass\nif fmt is Format.TFLITE: pass\nif p.suffix in (".tflite", ".x"): pass\n'
            'd = {Format.ONNX: 1}\n')
    assert len(_format_literals(ast.parse(code))) == 4
