"""The fused OpenVINO ops (dymn_edge.runtime.ops): real g++, real OpenVINO, a NumPy reference.

Each case is an ONNX graph holding one ``dymn.edge`` node (opset 18 + dymn.edge v1), read by
OpenVINO after ``add_to_core``, compiled for CPU in f32 on one thread, and compared with a
float64 NumPy reference of the op's definition: max abs error / max |y| below 1e-5. The
builder's cache, rebuild, lock and error paths run the real compiler too.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
from onnx import TensorProto, helper

from dymn_edge.runtime import ops

TOL = 1e-5
CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
INPUTS = ("x", "x_bias", "att", "bank", "bias", "coef", "gate_f", "gate_t")
#: (F, T) at the op's input: odd and even, and smaller than the 5x5 kernel
SIZES = [(9, 12), (8, 11), (2, 3), (1, 4), (5, 1)]


# ------------------------------------------------------------------------------------------
# references (float64)

def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _act(v: np.ndarray, act: int) -> np.ndarray:
    if act == 1:
        return np.maximum(v, 0.0)
    if act == 2:
        return v * np.clip(v + 3.0, 0.0, 6.0) / 6.0
    return v


def dy_tail_ref(feeds: dict[str, np.ndarray], *, stride: int, pad: int, act: int, m: int) -> np.ndarray:
    """The DyTail definition, written out in float64."""
    f = {k: v.astype(np.float64) for k, v in feeds.items()}
    batch, channels = f["x"].shape[:2]
    k = f["bank"].shape[2]
    u = _act(f["x"] + f["x_bias"][None, :, None, None], act)
    u = np.pad(u, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    f_out = (u.shape[2] - k) // stride + 1
    t_out = (u.shape[3] - k) // stride + 1
    w = np.einsum("bk,kcij->bcij", f["att"], f["bank"])
    d = np.broadcast_to(f["bias"][None, :, None, None], (batch, channels, f_out, t_out)).copy()
    for i, j in itertools.product(range(k), range(k)):
        window = u[:, :, i:i + stride * (f_out - 1) + 1:stride, j:j + stride * (t_out - 1) + 1:stride]
        d += w[:, :, i, j][:, :, None, None] * window
    a = f["coef"][:, :m * channels].reshape(batch, m, channels)[..., None, None]
    b = f["coef"][:, m * channels:].reshape(batch, m, channels)[..., None, None]
    z = np.max(a * d[:, None] + b, axis=1)
    return z * _sigmoid(f["gate_f"]) * _sigmoid(f["gate_t"])


# ------------------------------------------------------------------------------------------
# graphs

def _model(node: onnx.NodeProto, inputs: list[tuple[str, list]]) -> onnx.ModelProto:
    return _model_many([node], inputs)


def _model_many(nodes: list[onnx.NodeProto], inputs: list[tuple[str, list]],
                outputs: tuple[str, ...] = ("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "fused", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid(ops.GRAPH_DOMAIN, 1)])


def dy_tail_shapes(batch, channels, f, t, *, k: int, stride: int, pad: int, m: int, k_count: int = 4) -> list:
    """(name, shape) of the eight inputs; int sizes, or strings for dynamic dims."""
    def out(n):
        return (n + 2 * pad - k) // stride + 1 if isinstance(n, int) else f"{n}_out"
    return list(zip(INPUTS, [[batch, channels, f, t], [channels], [batch, k_count], [k_count, channels, k, k],
                             [channels], [batch, 2 * m * channels], [batch, channels, out(f), 1],
                             [batch, channels, 1, out(t)]]))


def dy_tail_model(shapes: list, *, stride: int, pad: int, act: int, m: int) -> onnx.ModelProto:
    node = helper.make_node("DyTail", list(INPUTS), ["y"], domain=ops.GRAPH_DOMAIN,
                            stride=stride, pad=pad, act=act, m=m)
    return _model(node, shapes)


def random_feeds(shapes: list, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs spread over the activations' kinks (hardswish bends at -3 and 3)."""
    return {n: (rng.standard_normal(s) * (2.5 if n in ("x", "x_bias") else 1.0)).astype(np.float32)
            for n, s in shapes}


def compile_onnx(model: onnx.ModelProto, folder: Path) -> ov.CompiledModel:
    path = folder / "fused.onnx"
    onnx.save(model, path)
    core = ov.Core()
    ops.add_to_core(core)
    return core.compile_model(core.read_model(str(path)), "CPU", CONFIG)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


# ------------------------------------------------------------------------------------------
# DyTail / MixBanks against the references

CASES = list(itertools.product([3, 5], [1, 2], [0, 1, 2], [1, 2], [1, 2]))


@pytest.mark.parametrize(("k", "stride", "act", "m", "batch"), CASES)
def test_dy_tail_matches_reference(cache, tmp_path: Path, k: int, stride: int, act: int, m: int,
                                   batch: int) -> None:
    rng = np.random.default_rng(CASES.index((k, stride, act, m, batch)))
    pad = (k - 1) // 2
    for f, t in SIZES:
        shapes = dy_tail_shapes(batch, 6, f, t, k=k, stride=stride, pad=pad, m=m)
        compiled = compile_onnx(dy_tail_model(shapes, stride=stride, pad=pad, act=act, m=m), tmp_path)
        feeds = random_feeds(shapes, rng)
        got = compiled(feeds)[0]
        want = dy_tail_ref(feeds, stride=stride, pad=pad, act=act, m=m)
        assert rel_error(got, want) < TOL, (f, t)


@pytest.mark.parametrize(("k", "stride", "pad"), [(4, 3, 1), (3, 1, 0), (5, 2, 0), (2, 2, 1), (7, 1, 3)])
def test_dy_tail_other_geometries(cache, tmp_path: Path, k: int, stride: int, pad: int) -> None:
    """Kernels, strides and pads outside the DyMN blocks take the generic paths; m = 3 maps."""
    rng = np.random.default_rng(k * 100 + stride * 10 + pad)
    for f, t in [(9, 12), (8, 7)]:
        shapes = dy_tail_shapes(2, 3, f, t, k=k, stride=stride, pad=pad, m=3)
        compiled = compile_onnx(dy_tail_model(shapes, stride=stride, pad=pad, act=2, m=3), tmp_path)
        feeds = random_feeds(shapes, rng)
        assert rel_error(compiled(feeds)[0], dy_tail_ref(feeds, stride=stride, pad=pad, act=2, m=3)) < TOL, (f, t)


@pytest.mark.torch
def test_reference_is_the_torch_definition() -> None:
    """The NumPy reference above is the PyTorch op the exporter writes (dymn_edge.models.fused)."""
    import torch

    from dymn_edge.models import fused

    rng = np.random.default_rng(1)
    for k, stride, act, m in [(3, 1, 1, 2), (5, 2, 2, 2), (3, 2, 0, 1), (5, 1, 2, 3)]:
        shapes = dy_tail_shapes(2, 5, 9, 10, k=k, stride=stride, pad=(k - 1) // 2, m=m)
        feeds = random_feeds(shapes, rng)
        args = [torch.from_numpy(feeds[n]).double() for n in INPUTS]
        want = fused.dy_tail(*args, stride, (k - 1) // 2, act, m).numpy()
        assert rel_error(dy_tail_ref(feeds, stride=stride, pad=(k - 1) // 2, act=act, m=m), want) < 1e-12
    att, bank = rng.random((2, 4)), rng.standard_normal((4, 9))
    assert np.allclose(fused.mix_banks(torch.from_numpy(att), torch.from_numpy(bank)).numpy(), att @ bank)


def test_dy_tail_dynamic_shapes(cache, tmp_path: Path) -> None:
    """Compiled without a reshape: the output's partial shape follows the inputs and attrs, and
    two lengths run through the one compiled model."""
    k, stride, pad, m = 5, 2, 2, 2
    shapes = dy_tail_shapes("B", 4, 16, "T", k=k, stride=stride, pad=pad, m=m)
    compiled = compile_onnx(dy_tail_model(shapes, stride=stride, pad=pad, act=2, m=m), tmp_path)
    assert str(compiled.output(0).get_partial_shape()) == "[?,4,8,?]"
    rng = np.random.default_rng(7)
    for batch, t in ((1, 10), (2, 23)):
        concrete = dy_tail_shapes(batch, 4, 16, t, k=k, stride=stride, pad=pad, m=m)
        feeds = random_feeds(concrete, rng)
        got = compiled(feeds)[0]
        assert got.shape == (batch, 4, 8, (t + 2 * pad - k) // stride + 1)
        assert rel_error(got, dy_tail_ref(feeds, stride=stride, pad=pad, act=2, m=m)) < TOL


@pytest.mark.parametrize(("precision", "tol"), [("bf16", TOL), ("f16", 1e-2)])
def test_half_precision_hints_run(cache, tmp_path: Path, precision: str, tol: float) -> None:
    """bf16 (the CPU default where it has AMX / AVX512-BF16) leaves the ops in f32; f16 hands
    them f16 tensors, which they widen to f32 (f16's rounding of the inputs is the error)."""
    shapes = dy_tail_shapes(2, 8, 9, 12, k=5, stride=2, pad=2, m=2)
    mix = helper.make_node("MixBanks", ["att", "bank2"], ["w"], domain=ops.GRAPH_DOMAIN)
    tail = helper.make_node("DyTail", list(INPUTS), ["y"], domain=ops.GRAPH_DOMAIN, stride=2, pad=2, act=2, m=2)
    model = _model_many([mix, tail], [*shapes, ("bank2", [4, 6])], outputs=("y", "w"))
    path = tmp_path / "half.onnx"
    onnx.save(model, path)
    core = ov.Core()
    ops.add_to_core(core)
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {**CONFIG, "INFERENCE_PRECISION_HINT": precision})
    feeds = random_feeds([*shapes, ("bank2", [4, 6])], np.random.default_rng(11))
    got = compiled(feeds)
    assert rel_error(got["y"], dy_tail_ref(feeds, stride=2, pad=2, act=2, m=2)) < tol
    assert rel_error(got["w"], feeds["att"].astype(np.float64) @ feeds["bank2"]) < tol


def test_threads_split_channels_without_changing_the_result(cache, tmp_path: Path) -> None:
    """With TBB (the wheel's thread pool) the ops split channels / columns over the plugin's
    threads; each output element is computed the same way, so the results are bit-identical."""
    assert ops.openvino_paths().tbb is not None  # the x86-64 / aarch64 wheels ship it
    shapes = dy_tail_shapes(2, 64, 16, 40, k=5, stride=2, pad=2, m=2)
    mix = helper.make_node("MixBanks", ["att", "bank2"], ["w"], domain=ops.GRAPH_DOMAIN)
    tail = helper.make_node("DyTail", list(INPUTS), ["y"], domain=ops.GRAPH_DOMAIN, stride=2, pad=2, act=1, m=2)
    inputs = [*shapes, ("bank2", [4, 40000])]
    path = tmp_path / "threads.onnx"
    onnx.save(_model_many([mix, tail], inputs, outputs=("y", "w")), path)
    core = ov.Core()
    ops.add_to_core(core)
    feeds = random_feeds(inputs, np.random.default_rng(5))
    got = [core.compile_model(core.read_model(str(path)), "CPU", {**CONFIG, "INFERENCE_NUM_THREADS": n})(feeds)
           for n in (1, 2)]
    assert np.array_equal(got[0]["y"], got[1]["y"]) and np.array_equal(got[0]["w"], got[1]["w"])
    assert rel_error(got[1]["y"], dy_tail_ref(feeds, stride=2, pad=2, act=1, m=2)) < TOL


def test_dy_tail_shape_inference_with_bounds(cache, tmp_path: Path) -> None:
    """Interval dims map through the window formula; the gates narrow what x leaves open."""
    shapes = dy_tail_shapes("B", 4, "F", "T", k=5, stride=2, pad=2, m=2)
    path = tmp_path / "bounds.onnx"
    onnx.save(dy_tail_model(shapes, stride=2, pad=2, act=1, m=2), path)
    core = ov.Core()
    ops.add_to_core(core)
    model = core.read_model(str(path))
    model.reshape({"x": ov.PartialShape([1, 4, 16, ov.Dimension(10, 100)]), "gate_f": ov.PartialShape([-1, 4, -1, 1])})
    assert str(model.output(0).get_partial_shape()) == "[1,4,8,5..50]"
    model.reshape({"x": ov.PartialShape([-1, 4, -1, -1]), "gate_t": ov.PartialShape([2, 4, 1, 7])})
    assert str(model.output(0).get_partial_shape()) == "[2,4,?,7]"


def test_dy_tail_refuses_a_coef_of_the_wrong_width(cache, tmp_path: Path) -> None:
    shapes = dy_tail_shapes(1, 4, 8, 8, k=3, stride=1, pad=1, m=2)
    shapes[5] = ("coef", [1, 12])  # 2 * m * C = 16
    with pytest.raises(Exception, match="2 \\* m \\* C = 16"):
        compile_onnx(dy_tail_model(shapes, stride=1, pad=1, act=1, m=2), tmp_path)


@pytest.mark.parametrize(("batch", "k_count", "n"), [(1, 4, 1), (2, 4, 7), (1, 1, 1024), (2, 5, 3000), (3, 4, 153600)])
def test_mix_banks_matches_reference(cache, tmp_path: Path, batch: int, k_count: int, n: int) -> None:
    node = helper.make_node("MixBanks", ["att", "bank"], ["y"], domain=ops.GRAPH_DOMAIN)
    compiled = compile_onnx(_model(node, [("att", [batch, k_count]), ("bank", [k_count, n])]), tmp_path)
    rng = np.random.default_rng(n)
    att = rng.random((batch, k_count), dtype=np.float32)
    bank = rng.standard_normal((k_count, n)).astype(np.float32)
    got = compiled({"att": att, "bank": bank})[0]
    assert rel_error(got, att.astype(np.float64) @ bank.astype(np.float64)) < TOL


def test_mix_banks_dynamic_batch(cache, tmp_path: Path) -> None:
    node = helper.make_node("MixBanks", ["att", "bank"], ["y"], domain=ops.GRAPH_DOMAIN)
    compiled = compile_onnx(_model(node, [("att", ["B", 4]), ("bank", [4, 50])]), tmp_path)
    assert str(compiled.output(0).get_partial_shape()) == "[?,50]"
    rng = np.random.default_rng(3)
    for batch in (1, 3):
        att = rng.random((batch, 4), dtype=np.float32)
        bank = rng.standard_normal((4, 50)).astype(np.float32)
        assert rel_error(compiled({"att": att, "bank": bank})[0], att.astype(np.float64) @ bank) < TOL


# ------------------------------------------------------------------------------------------
# AxisMeans

def axis_means_ref(x: np.ndarray) -> np.ndarray:
    """The AxisMeans definition in float64: the means over T, then over F."""
    x = x.astype(np.float64)
    return np.concatenate([x.mean(3), x.mean(2)], axis=2)


def axis_means_model(shape: list) -> onnx.ModelProto:
    return _model(helper.make_node("AxisMeans", ["x"], ["y"], domain=ops.GRAPH_DOMAIN), [("x", shape)])


@pytest.mark.parametrize("shape", [[1, 16, 64, 500], [2, 3, 9, 12], [1, 5, 1, 7], [2, 4, 6, 1], [1, 960, 2, 7],
                                   [3, 2, 33, 17]])
def test_axis_means_matches_reference(cache, tmp_path: Path, shape: list) -> None:
    compiled = compile_onnx(axis_means_model(shape), tmp_path)
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 2.0 + 0.5).astype(np.float32)
    got = compiled({"x": x})[0]
    assert got.shape == (shape[0], shape[1], shape[2] + shape[3])
    assert rel_error(got, axis_means_ref(x)) < TOL


def test_axis_means_dynamic_shapes_and_threads(cache, tmp_path: Path) -> None:
    """One compiled model takes other sizes; bounds add up (F + T); 2 threads give the same bits."""
    path = tmp_path / "means.onnx"
    onnx.save(axis_means_model(["B", 8, "F", "T"]), path)
    core = ov.Core()
    ops.add_to_core(core)
    model = core.read_model(str(path))
    assert str(model.output(0).get_partial_shape()) == "[?,8,?]"
    bounded = model.clone()
    bounded.reshape({"x": ov.PartialShape([1, 8, 16, ov.Dimension(10, 100)])})
    assert str(bounded.output(0).get_partial_shape()) == "[1,8,26..116]"
    compiled = [core.compile_model(model, "CPU", {**CONFIG, "INFERENCE_NUM_THREADS": n}) for n in (1, 2)]
    rng = np.random.default_rng(9)
    for shape in ([1, 8, 16, 10], [2, 8, 5, 41], [3, 8, 64, 50]):
        x = rng.standard_normal(shape).astype(np.float32)
        got = [c({"x": x})[0] for c in compiled]
        assert np.array_equal(got[0], got[1])
        assert rel_error(got[0], axis_means_ref(x)) < TOL


# ------------------------------------------------------------------------------------------
# DyExpTail

EXP_INPUTS = ("x", "w_exp", *INPUTS[1:])


def dy_exp_tail_ref(feeds: dict[str, np.ndarray], **attrs: int) -> np.ndarray:
    """The DyExpTail definition in float64: the per-sample 1x1 expansion, then DyTail."""
    x, w_exp = feeds["x"].astype(np.float64), feeds["w_exp"].astype(np.float64)
    batch, c_in = x.shape[:2]
    u = np.einsum("bcj,bjft->bcft", w_exp.reshape(batch, -1, c_in), x)
    return dy_tail_ref({**feeds, "x": u}, **attrs)


def dy_exp_tail_shapes(batch, c_in, channels, f, t, **geom) -> list:
    """(name, shape) of the nine inputs: DyTail's with x the block input and w_exp after it."""
    tail = dy_tail_shapes(batch, channels, f, t, **geom)
    w_cols = channels * c_in if isinstance(channels, int) and isinstance(c_in, int) else "N"
    return [("x", [batch, c_in, f, t]), ("w_exp", [batch, w_cols]), *tail[1:]]


def dy_exp_tail_model(shapes: list, *, stride: int, pad: int, act: int, m: int) -> onnx.ModelProto:
    node = helper.make_node("DyExpTail", list(EXP_INPUTS), ["y"], domain=ops.GRAPH_DOMAIN,
                            stride=stride, pad=pad, act=act, m=m)
    return _model(node, shapes)


def exp_feeds(shapes: list, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """As :func:`random_feeds`, with w_exp scaled so the expansion spreads like x does."""
    feeds = random_feeds(shapes, rng)
    c_in = feeds["x"].shape[1]
    feeds["w_exp"] = (feeds["w_exp"] / np.sqrt(c_in)).astype(np.float32)
    return feeds


@pytest.mark.parametrize(("k", "stride", "act", "m", "batch"), CASES)
def test_dy_exp_tail_matches_reference(cache, tmp_path: Path, k: int, stride: int, act: int, m: int,
                                       batch: int) -> None:
    rng = np.random.default_rng(1000 + CASES.index((k, stride, act, m, batch)))
    pad = (k - 1) // 2
    for c_in, (f, t) in itertools.product([1, 3, 16, 24], SIZES):
        shapes = dy_exp_tail_shapes(batch, c_in, 6, f, t, k=k, stride=stride, pad=pad, m=m)
        compiled = compile_onnx(dy_exp_tail_model(shapes, stride=stride, pad=pad, act=act, m=m), tmp_path)
        feeds = exp_feeds(shapes, rng)
        want = dy_exp_tail_ref(feeds, stride=stride, pad=pad, act=act, m=m)
        assert rel_error(compiled(feeds)[0], want) < TOL, (c_in, f, t)


@pytest.mark.parametrize(("k", "stride", "pad", "c_in", "channels", "f", "t"),
                         [(3, 1, 1, 24, 9, 21, 1500), (5, 2, 2, 16, 5, 19, 2100), (5, 1, 2, 40, 4, 13, 900),
                          (3, 2, 1, 3, 6, 40, 9000), (4, 3, 1, 24, 3, 17, 1400), (3, 1, 0, 24, 2, 11, 1000)])
def test_dy_exp_tail_long_planes_run_in_bands(cache, tmp_path: Path, k: int, stride: int, pad: int, c_in: int,
                                              channels: int, f: int, t: int) -> None:
    """Planes too long for one band (C_in x T past the band budget) go in bands of output rows
    whose halo rows are recomputed; the last band is short; the generic kernel / stride too."""
    shapes = dy_exp_tail_shapes(2, c_in, channels, f, t, k=k, stride=stride, pad=pad, m=2)
    compiled = compile_onnx(dy_exp_tail_model(shapes, stride=stride, pad=pad, act=2, m=2), tmp_path)
    feeds = exp_feeds(shapes, np.random.default_rng(t))
    assert rel_error(compiled(feeds)[0], dy_exp_tail_ref(feeds, stride=stride, pad=pad, act=2, m=2)) < TOL


def test_dy_exp_tail_dynamic_shapes_and_threads(cache, tmp_path: Path) -> None:
    """One compiled model takes other batches and lengths; 2 threads give the same bits."""
    k, stride, pad, m = 5, 2, 2, 2
    shapes = dy_exp_tail_shapes("B", 8, 12, 16, "T", k=k, stride=stride, pad=pad, m=m)
    path = tmp_path / "exp.onnx"
    onnx.save(dy_exp_tail_model(shapes, stride=stride, pad=pad, act=1, m=m), path)
    core = ov.Core()
    ops.add_to_core(core)
    model = core.read_model(str(path))
    assert str(model.output(0).get_partial_shape()) == "[?,12,8,?]"
    compiled = [core.compile_model(model, "CPU", {**CONFIG, "INFERENCE_NUM_THREADS": n}) for n in (1, 2)]
    rng = np.random.default_rng(17)
    for batch, t in ((1, 10), (2, 23), (2, 1200)):
        feeds = exp_feeds(dy_exp_tail_shapes(batch, 8, 12, 16, t, k=k, stride=stride, pad=pad, m=m), rng)
        got = [c(feeds)[0] for c in compiled]
        assert got[0].shape == (batch, 12, 8, (t + 2 * pad - k) // stride + 1)
        assert np.array_equal(got[0], got[1])
        assert rel_error(got[0], dy_exp_tail_ref(feeds, stride=stride, pad=pad, act=1, m=m)) < TOL


def test_dy_exp_tail_refuses_a_w_exp_of_the_wrong_width(cache, tmp_path: Path) -> None:
    shapes = dy_exp_tail_shapes(1, 3, 4, 8, 8, k=3, stride=1, pad=1, m=2)
    shapes[1] = ("w_exp", [1, 10])  # C * C_in = 12
    with pytest.raises(Exception, match="C \\* C_in = 12"):
        compile_onnx(dy_exp_tail_model(shapes, stride=1, pad=1, act=1, m=2), tmp_path)


@pytest.mark.torch
def test_exp_reference_is_the_torch_definition() -> None:
    """The NumPy DyExpTail / AxisMeans references are the PyTorch ops the exporter writes."""
    import torch

    from dymn_edge.models import fused

    rng = np.random.default_rng(2)
    for k, stride, act, m, c_in in [(3, 1, 1, 2, 3), (5, 2, 2, 2, 16), (3, 2, 0, 1, 1)]:
        shapes = dy_exp_tail_shapes(2, c_in, 5, 9, 10, k=k, stride=stride, pad=(k - 1) // 2, m=m)
        feeds = exp_feeds(shapes, rng)
        args = [torch.from_numpy(feeds[n]).double() for n in EXP_INPUTS]
        want = fused.dy_exp_tail(*args, stride, (k - 1) // 2, act, m).numpy()
        got = dy_exp_tail_ref(feeds, stride=stride, pad=(k - 1) // 2, act=act, m=m)
        assert rel_error(got, want) < 1e-12
    x = rng.standard_normal((2, 3, 5, 7))
    assert np.allclose(fused.axis_means(torch.from_numpy(x)).numpy(), axis_means_ref(x), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Stem

def stem_ref(x: np.ndarray, w: np.ndarray, bias: np.ndarray, *, stride: int, pad: int, act: int) -> np.ndarray:
    """The Stem definition in float64: act(conv2d(x, w, bias, stride, pad)), one input channel."""
    x = np.pad(x.astype(np.float64)[:, 0], ((0, 0), (pad, pad), (pad, pad)))
    w, k = w.astype(np.float64)[:, 0], w.shape[-1]
    f_out, t_out = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    y = np.broadcast_to(bias.astype(np.float64)[None, :, None, None], (x.shape[0], w.shape[0], f_out, t_out)).copy()
    for i, j in itertools.product(range(k), range(k)):
        window = x[:, i:i + stride * (f_out - 1) + 1:stride, j:j + stride * (t_out - 1) + 1:stride]
        y += w[:, i, j][None, :, None, None] * window[:, None]
    return _act(y, act)


def stem_model(x_shape: list, channels: int, k: int, *, stride: int, pad: int, act: int) -> onnx.ModelProto:
    node = helper.make_node("Stem", ["x", "w", "bias"], ["y"], domain=ops.GRAPH_DOMAIN, stride=stride, pad=pad, act=act)
    return _model(node, [("x", x_shape), ("w", [channels, 1, k, k]), ("bias", [channels])])


def stem_feeds(x_shape: list, channels: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": (rng.standard_normal(x_shape) * 2.5).astype(np.float32),
            "w": rng.standard_normal((channels, 1, k, k)).astype(np.float32),
            "bias": rng.standard_normal(channels).astype(np.float32)}


#: (k, stride, pad, F, T): the DyMN stem (3, 2, 1) at odd / even / tiny sizes and other pads
#: (its fast path), and other geometries (the direct fallback)
STEM_CASES = [(3, 2, 1, 128, 1000), (3, 2, 1, 9, 12), (3, 2, 1, 8, 11), (3, 2, 1, 1, 1), (3, 2, 1, 2, 3),
              (3, 2, 0, 7, 10), (3, 2, 2, 5, 6), (3, 2, 0, 3, 3), (3, 1, 1, 6, 7), (5, 2, 2, 9, 13), (4, 3, 1, 10, 11),
              (1, 1, 0, 3, 4)]


@pytest.mark.parametrize(("k", "stride", "pad", "f", "t"), STEM_CASES)
@pytest.mark.parametrize("act", [0, 1, 2])
def test_stem_matches_reference(cache, tmp_path: Path, k: int, stride: int, pad: int, f: int, t: int,
                                act: int) -> None:
    batch, channels = (1, 16) if f * t > 10_000 else (2, 5)
    compiled = compile_onnx(stem_model([batch, 1, f, t], channels, k, stride=stride, pad=pad, act=act), tmp_path)
    feeds = stem_feeds([batch, 1, f, t], channels, k, np.random.default_rng(f * t + k))
    got = compiled(feeds)[0]
    want = stem_ref(feeds["x"], feeds["w"], feeds["bias"], stride=stride, pad=pad, act=act)
    assert rel_error(got, want) < TOL


def test_stem_dynamic_shapes_and_threads(cache, tmp_path: Path) -> None:
    """One compiled model takes other sizes and batches; 2 threads give the same bits."""
    path = tmp_path / "stem.onnx"
    onnx.save(stem_model(["B", 1, "F", "T"], 16, 3, stride=2, pad=1, act=2), path)
    core = ov.Core()
    ops.add_to_core(core)
    model = core.read_model(str(path))
    assert str(model.output(0).get_partial_shape()) == "[?,16,?,?]"
    bounded = model.clone()
    bounded.reshape({"x": ov.PartialShape([1, 1, 128, ov.Dimension(10, 101)])})
    assert str(bounded.output(0).get_partial_shape()) == "[1,16,64,5..51]"
    compiled = [core.compile_model(model, "CPU", {**CONFIG, "INFERENCE_NUM_THREADS": n}) for n in (1, 2)]
    rng = np.random.default_rng(5)
    for shape in ([1, 1, 128, 100], [3, 1, 128, 317], [2, 1, 7, 2]):
        feeds = stem_feeds(shape, 16, 3, rng)
        got = [c(feeds)[0] for c in compiled]
        assert np.array_equal(got[0], got[1])
        assert rel_error(got[0], stem_ref(feeds["x"], feeds["w"], feeds["bias"], stride=2, pad=1, act=2)) < TOL


def test_stem_refuses_more_than_one_input_channel(cache, tmp_path: Path) -> None:
    node = helper.make_node("Stem", ["x", "w", "bias"], ["y"], domain=ops.GRAPH_DOMAIN, stride=2, pad=1, act=2)
    model = _model(node, [("x", [1, 2, 8, 8]), ("w", [4, 2, 3, 3]), ("bias", [4])])
    with pytest.raises(Exception, match="one input channel|w \\(C, 1, k, k\\)"):
        compile_onnx(model, tmp_path)


@pytest.mark.torch
def test_stem_reference_is_the_torch_definition() -> None:
    import torch

    from dymn_edge.models import fused

    rng = np.random.default_rng(3)
    for k, stride, pad, act in [(3, 2, 1, 2), (5, 1, 2, 1), (3, 2, 0, 0)]:
        feeds = stem_feeds([2, 1, 9, 12], 4, k, rng)
        args = [torch.from_numpy(feeds[n]).double() for n in ("x", "w", "bias")]
        want = fused.stem(*args, stride, pad, act).numpy()
        got = stem_ref(feeds["x"], feeds["w"], feeds["bias"], stride=stride, pad=pad, act=act)
        assert rel_error(got, want) < 1e-12


def test_uses_fused_ops(tmp_path: Path) -> None:
    fused = tmp_path / "fused.onnx"
    onnx.save(dy_tail_model(dy_tail_shapes(1, 2, 4, 4, k=3, stride=1, pad=1, m=2), stride=1, pad=1, act=0, m=2),
              fused)
    plain = tmp_path / "plain.onnx"
    relu = helper.make_node("Relu", ["x"], ["y"])
    onnx.save(helper.make_model(helper.make_graph(
        [relu], "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])), plain)
    assert ops.uses_fused_ops(fused) and not ops.uses_fused_ops(plain)
