"""Arm Ethos-U NPU rows: compile full-integer int8 TFLite files with Vela and read its numbers.

Why: "int8 for integer-only NPUs" means nothing until the NPU's own compiler has placed every
operator on the NPU. Vela (``pip install dymn-edge[npu]``, Arm's ``ethos-u-vela``) compiles a
full-int8 ``.tflite`` for one accelerator configuration and reports, per network, which
operators stay on the CPU (a fallback costs a round trip through the Cortex-M), the SRAM and
flash the network needs, and an estimate of the inference time from its cycle model. These rows
are that report; they are estimates of Vela's performance model, not measurements on hardware.

Vela runs in a child process (it keeps module-level state and prints to stdout) with its
default ``vela.ini`` system configuration for the accelerator.
"""

from __future__ import annotations

import csv
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dymn_edge.errors import DymnEdgeError
from dymn_edge.export.api import export_model
from dymn_edge.export.config import ExportConfig, QuantizationConfig
from importlib import metadata

log = logging.getLogger(__name__)

__all__ = ["ACCELERATORS", "compile_vela", "format_table", "npu_rows", "vela_version"]

#: the accelerator configurations dymn-bench --npu reports by default
ACCELERATORS = ("ethos-u55-256", "ethos-u65-512")
KNOWN = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
         "ethos-u65-512", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
         "ethos-u85-2048")
_OPS = re.compile(r"^(CPU|NPU) operators = (\d+) \(([\d.]+)%\)", re.M)
VELA_TIMEOUT_S = 1800


def vela_version() -> str | None:
    """Installed Vela version, or None when the ``npu`` extra is not installed."""
    try:
        return metadata.version("ethos-u-vela")
    except metadata.PackageNotFoundError:
        return None


def check_accelerators(names: list[str]) -> list[str]:
    """Lower-cased, known accelerator names; one clear error for anything else."""
    out = [n.strip().lower() for n in names if n.strip()]
    bad = [n for n in out if n not in KNOWN]
    if bad or not out:
        raise DymnEdgeError(f"--npu: unknown accelerator {', '.join(bad) or '(none)'} "
                            f"(known: {', '.join(KNOWN)})")
    return out


def compile_vela(tflite: str | Path, accelerator: str, *, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Compile ``tflite`` for ``accelerator`` with Vela; what it reports, as one row.

    Keys: ``accelerator``, ``npu_ops`` / ``cpu_ops`` and ``npu_share`` (Vela's count after its
    own graph rewrites), ``cpu_op_types`` (op types left in the compiled file besides the NPU
    custom op: what falls back), ``sram_kib``, ``flash_kib`` (on- plus off-chip flash) and
    ``dram_kib`` (where the memory mode keeps weights / the arena: U65's Dedicated_Sram),
    ``inference_ms`` (Vela's estimate), ``macs``, ``system_config``; or ``error`` with Vela's
    last message line when it cannot compile the file (e.g. the command stream exceeds the
    hardware's 16 MiB).
    """
    if vela_version() is None:
        raise DymnEdgeError("--npu needs Arm's Vela compiler: pip install 'dymn-edge[npu]' "
                            "(ethos-u-vela)")
    tflite = Path(tflite)
    row: dict[str, Any] = {"accelerator": accelerator, "file": tflite.name}
    with tempfile.TemporaryDirectory(prefix="dymn-edge-vela-") as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())",
               str(tflite), "--accelerator-config", accelerator, "--output-dir", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=VELA_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            row["error"] = f"vela did not finish in {VELA_TIMEOUT_S} s"
            return row
        text = proc.stdout + "\n" + proc.stderr
        summaries = sorted(out.glob(f"{tflite.stem}_summary_*.csv"))
        if proc.returncode != 0 or not summaries:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning")]
            row["error"] = (lines[-1] if lines else f"vela exit code {proc.returncode}")[:300]
            return row
        with summaries[0].open(newline="") as f:
            s = next(csv.DictReader(f))
        ops = {m.group(1): (int(m.group(2)), float(m.group(3))) for m in _OPS.finditer(text)}
        npu, cpu = ops.get("NPU", (0, 0.0))[0], ops.get("CPU", (0, 0.0))[0]
        row.update(
            system_config=s.get("system_config"), memory_mode=s.get("memory_mode"),
            npu_ops=npu, cpu_ops=cpu, npu_share=npu / (npu + cpu) if npu + cpu else 0.0,
            cpu_op_types=_cpu_op_types(out / f"{tflite.stem}_vela.tflite"),
            sram_kib=float(s["sram_memory_used"]),
            flash_kib=float(s.get("on_chip_flash_memory_used", 0.0)) + float(s.get("off_chip_flash_memory_used", 0.0)),
            dram_kib=float(s.get("dram_memory_used", 0.0)),
            inference_ms=float(s["inference_time"]) * 1e3, macs=int(float(s["nn_macs"])),
            cycles=int(float(s["cycles_total"])),
        )
    return row


def _cpu_op_types(compiled: Path) -> dict[str, int]:
    """Op types of the compiled file other than Vela's NPU op (``ethos-u`` custom): the fallbacks."""
    if not compiled.is_file():
        return {}
    from ethosu.vela.tflite.BuiltinOperator import BuiltinOperator  # noqa: PLC0415
    from ethosu.vela.tflite.Model import Model  # noqa: PLC0415

    model = Model.GetRootAsModel(compiled.read_bytes(), 0)
    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        codes.append(custom.decode() if custom else names.get(code, str(code)))
    counts: dict[str, int] = {}
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        for k in range(sg.OperatorsLength()):
            name = codes[sg.Operators(k).OpcodeIndex()]
            if name != "ethos-u":
                counts[name] = counts.get(name, 0) + 1
    return counts


def npu_rows(files: dict[str, str | Path], accelerators: list[str]) -> list[dict[str, Any]]:
    """Vela rows for every (label, full-int8 file) x accelerator."""
    rows = []
    for label, path in files.items():
        for acc in accelerators:
            log.info("vela: %s for %s ...", label, acc)
            rows.append({"model": label, **compile_vela(path, acc)})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per (model, accelerator): NPU share, SRAM, flash, estimated time."""
    head = ("model", "accelerator", "NPU ops", "CPU ops", "SRAM KiB", "flash+DRAM KiB", "est. ms", "note")
    body = []
    for r in rows:
        if "error" in r:
            body.append((r["model"], r["accelerator"], "-", "-", "-", "-", "-", f"failed: {r['error']}"))
            continue
        note = ", ".join(f"{k} {v}" for k, v in sorted(r["cpu_op_types"].items())) or "all on the NPU"
        body.append((r["model"], r["accelerator"], f"{r['npu_share'] * 100:.1f} %", str(r["cpu_ops"]),
                     f"{r['sram_kib']:.0f}", f"{r['flash_kib'] + r['dram_kib']:.0f}",
                     f"{r['inference_ms']:.1f}", note))
    table = [head, *body]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(Vela's performance-model estimates with its default system " \
        "configuration, not hardware measurements)"


def export_full_int8(model: str, *, weights: str | None, random_init: bool, window_s: float | None,
                     activation: str | None, calibration: str | None, outdir: Path) -> Path:
    """The ``--full-int8`` TFLite of one model (what the NPU runs), written into ``outdir``."""
    if calibration is None:
        raise DymnEdgeError("--npu exports --full-int8 files: pass --calibration DIR (audio like "
                            "the model will hear), or compile existing files with --npu-files")
    outdir.mkdir(parents=True, exist_ok=True)
    cfg = ExportConfig(model=model, weights=weights, random_init=random_init, format="tflite",
                       precision="int8", quantization=QuantizationConfig(scheme="full_int8", activation_type="int8"),
                       window_seconds=window_s, output_activation=activation, calibration=calibration,
                       output=outdir / f"{model}{'-untrained' if random_init else ''}-full-int8.tflite")
    return export_model(cfg, progress=False).path


def run_npu(*, accelerators: list[str], files: list[str] | None, models: list[str],
            weights: str | None, random_init: bool, window_s: float | None,
            activation: str | None, calibration: str | None, workdir: str | None) -> list[dict[str, Any]]:
    """``dymn-bench --npu``: Vela rows for ``files``, else for each model's fresh full-int8 export."""
    accelerators = check_accelerators(accelerators)
    if vela_version() is None:
        raise DymnEdgeError("--npu needs Arm's Vela compiler: pip install 'dymn-edge[npu]' "
                            "(ethos-u-vela)")
    if files:
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise DymnEdgeError(f"--npu-files: not found: {', '.join(missing)}")
        return npu_rows({Path(f).name: f for f in files}, accelerators)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="dymn-edge-npu-"))
    built = {}
    for m in models:
        built[m] = export_full_int8(m, weights=weights if len(models) == 1 else None,
                                    random_init=random_init, window_s=window_s, activation=activation,
                                    calibration=calibration, outdir=root / "npu")
    return npu_rows(built, accelerators)
