"""The documentation is tested: its commands, its Python example and its links.

- Every ``dymn-*`` command line of a fenced shell block in ``README.md`` and ``docs/*.md`` is
  parsed by that tool's own argparse parser (nothing runs): a documented option a tool no
  longer has, or a value it refuses, fails here.
- The README's quickstart really runs, in a temporary folder, on the random-init ONNX file its
  first line exports (the microphone line is only parsed); then the README's Python example
  runs there on the same files.
- Every relative link (and its ``#anchor``) resolves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
SHELL_LANGS = {"bash", "sh", "shell", "console"}
#: Control operators between commands of one line (redirections are dropped with their target).
CONTROL = {"|", "||", "&&", ";", "&", "(", ")", ";;"}
REDIRECT = re.compile(r"^\d*(>|>>|<|<<<|>&|<&|&>)$")


def _parsers() -> dict[str, Callable]:
    from dymn_edge.benchmarks.cli import build_parser as bench
    from dymn_edge.export.cli import build_parser as export
    from dymn_edge.runtime.cli import build_listen_parser, build_tag_parser
    from dymn_edge.runtime.device.events_cli import build_parser as events
    from dymn_edge.runtime.info import build_parser as info

    return {"dymn-export": export, "dymn-tag": build_tag_parser, "dymn-listen": build_listen_parser,
            "dymn-bench": bench, "dymn-events": events, "dymn-info": info}


# -- extraction ------------------------------------------------------------------------


def fenced_blocks(path: Path, langs: set[str]) -> list[tuple[int, str]]:
    """(first line number, text) of each fenced block whose language is in ``langs``."""
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, start, body = fence.group(1).lower(), n + 1, []
        elif fence:
            if lang in langs:
                blocks.append((start, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def logical_lines(block: str) -> Iterator[str]:
    """Lines with backslash continuations joined and here-document bodies left out."""
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
            line = line[:heredoc.start()]
        if line.strip():
            yield line


def commands(line: str) -> Iterator[list[str]]:
    """The simple commands of one shell line: words without redirections, assignments, sudo."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lex.whitespace_split = True
    lex.commenters = "#"
    words: list[str] = []
    tokens = list(lex)
    k = 0
    while k < len(tokens):
        tok = tokens[k]
        if tok.isdigit() and k + 1 < len(tokens) and REDIRECT.match(tokens[k + 1]):
            pass  # the file descriptor of `2>&1`
        elif tok in CONTROL:
            if words:
                yield words
            words = []
        elif REDIRECT.match(tok) or tok in (">", ">>", "<", "2>"):
            k += 1  # its target
        elif not words and (re.match(r"^[A-Za-z_]\w*=", tok) or tok == "sudo"):
            pass
        else:
            words.append(tok)
        k += 1
    if words:
        yield words


def documented_commands() -> list[tuple[str, list[str]]]:
    """("file:line", argv with the program's base name first) of every dymn-* command."""
    found = []
    for doc in [README, *DOCS]:
        for start, block in fenced_blocks(doc, SHELL_LANGS):
            for line in logical_lines(block):
                for words in commands(line):
                    prog = Path(words[0]).name
                    if prog.startswith("dymn-"):
                        found.append((f"{doc.relative_to(REPO)}:{start}", [prog, *words[1:]]))
    return found


COMMANDS = documented_commands()


def test_extraction_sees_the_documented_commands() -> None:
    """The extractor finds the commands a reader sees (a broken extractor would test nothing)."""
    progs = {argv[0] for _, argv in COMMANDS}
    assert progs == set(_parsers()), progs
    assert len(COMMANDS) >= 20
    # a continuation line, a pipe and a here-document in the same docs
    assert any("--print-systemd-unit" in argv and "--env-file" in argv for _, argv in COMMANDS)
    assert not any("TOML" in argv for _, argv in COMMANDS)


def test_commands_split_like_a_shell() -> None:
    line = 'A=1 .venv/bin/dymn-tag --model "m x.onnx" a.wav 2>&1 | sudo tee out.txt && dymn-info m # note'
    assert list(commands(line)) == [[".venv/bin/dymn-tag", "--model", "m x.onnx", "a.wav"], ["tee", "out.txt"],
                                    ["dymn-info", "m"]]
    assert list(logical_lines("dymn-x \\\n  --a 1\ncat > f <<'EOF'\nbody\nEOF\nnext")) == [
        "dymn-x  --a 1", "cat > f ", "next"]


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[f"{w}:{a[0]}" for w, a in COMMANDS])
def test_documented_command_parses(where: str, argv: list[str], capsys: pytest.CaptureFixture) -> None:
    parser = _parsers()[argv[0]]()
    try:
        parser.parse_args(argv[1:])
    except SystemExit as exc:  # OneLineErrorParser: one line on stderr, exit 2; --help / --version: 0
        assert exc.code == 0, f"{where}: {shlex.join(argv)}\n{capsys.readouterr().err}"


# -- the quickstart and the Python example ----------------------------------------------


def _section_block(heading: str, lang: str) -> str:
    """The first ``lang`` block after the README heading ``heading``."""
    text = README.read_text()
    at = text.index(f"\n## {heading}\n")
    blocks = fenced_blocks(README, {lang})
    line_of_heading = text[:at].count("\n") + 2
    return next(body for start, body in blocks if start > line_of_heading)


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def _write_recording(path: Path) -> None:
    """3 s of a 440 Hz tone under noise at 16 kHz (the tools resample to 32 kHz)."""
    import soundfile as sf

    sr = 16000
    t = np.arange(3 * sr) / sr
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, wave.astype(np.float32), sr)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the README's quickstart in a fresh folder: every line but the microphone's."""
    work = tmp_path_factory.mktemp("quickstart")
    runs = {}
    env = {**os.environ, "DYMN_EDGE_CACHE": str(work / "cache")}
    for line in logical_lines(_section_block("Quickstart", "bash")):
        for words in commands(line):
            for w in words:
                if w.endswith(".wav") and not (work / w).exists():
                    _write_recording(work / w)
            if words[0] == "dymn-listen":  # needs a microphone: parsed above, not run here
                continue
            proc = subprocess.run([_tool(words[0]), *words[1:]], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=600)
            runs[shlex.join(words)] = proc
    return {"dir": work, "runs": runs}


@pytest.mark.torch
def test_readme_quickstart_runs(quickstart: dict) -> None:
    runs = quickstart["runs"]
    assert [c.split()[0] for c in runs] == ["dymn-export", "dymn-info", "dymn-tag", "dymn-tag"]
    for cmd, proc in runs.items():
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        assert "Created TensorFlow Lite XNNPACK delegate" not in proc.stderr
    export, info, tag, tag_json = runs.values()
    assert (quickstart["dir"] / "dymn-s.onnx").is_file()
    assert "UNTRAINED" in info.stdout and "527" in info.stdout
    assert "recording.wav" in tag.stdout
    rows = [json.loads(x) for x in tag_json.stdout.splitlines() if x.strip()]
    assert len(rows) >= 4 and all("start" in r or "windows" in r or "file" in r for r in rows)


@pytest.mark.torch
def test_readme_python_example_runs(quickstart: dict) -> None:
    """The README's Python block as a script in the quickstart folder (its files are there)."""
    code = _section_block("Python", "python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=quickstart["dir"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) >= 3
    for line in lines[:3]:  # the top 3 labels with a probability
        name, p = line.rsplit(" ", 1)
        assert name and 0.0 <= float(p) <= 1.0


def test_python_api_doc_blocks_compile_and_name_real_things() -> None:
    """docs/python-api.md's blocks are valid Python whose imports exist (the microphone block
    needs a device: it is not run here)."""
    import importlib

    blocks = fenced_blocks(REPO / "docs" / "python-api.md", {"python"})
    assert len(blocks) >= 2
    for start, code in blocks:
        compile(code, f"python-api.md:{start}", "exec")
        for mod, names in re.findall(r"^from (\S+) import (.+)$", code, re.MULTILINE):
            m = importlib.import_module(mod)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(m, name), f"python-api.md:{start}: {mod}.{name}"


# -- layout and links --------------------------------------------------------------------


def test_readme_first_two_screens() -> None:
    """Install, quickstart, the labels format and the Pi within the first ~two screens."""
    lines = README.read_text().splitlines()
    assert 120 <= len(lines) <= 220, len(lines)
    head = "\n".join(lines[:125])
    for must in ("## Install", "## Quickstart", "## Labels", "index,display_name", "## Raspberry Pi",
                 "py3-none-any.whl[litert]"):
        assert must in head, must
    assert "bash .ci/setup.sh && .venv/bin/dymn-export --model dymn-s --random-init --format tflite" in head
    assert ".venv/bin/python -m pytest" in head


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {_slug(h) for h in re.findall(r"^#+\s+(.+)$", text, re.MULTILINE)}


LINKED = [README, *DOCS, REPO / "CHANGELOG.md"]


@pytest.mark.parametrize("doc", LINKED, ids=[str(p.relative_to(REPO)) for p in LINKED])
def test_relative_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{doc.relative_to(REPO)}: {bad}"
