// dymn-edge fused operations for OpenVINO (CPU), compiled on first use for this machine by
// dymn_edge.runtime.ops.extension_path() against the headers inside the openvino wheel.
//
// These ops replace the parts of a DyMN block that OpenVINO runs as many small kernels:
//   MixBanks(att (B,K), bank (K,N)) -> (B,N): y[b,n] = sum_k att[b,k] * bank[k,n]
//   DyTail(x, x_bias, att, bank, bias, coef, gate_f, gate_t) -> (B,C,F',T'):
//     u = act(x + x_bias), zero-padded by `pad`; a depthwise kxk conv (stride `stride`) whose
//     kernel is mixed per sample from the K-bank, plus bias; the Dy-ReLU max over `m` maps
//     (coef map-major: slopes then offsets); times sigmoid(gate_f) and sigmoid(gate_t).
//   DyExpTail(x, w_exp, x_bias, att, bank, bias, coef, gate_f, gate_t): DyTail on the expansion
//     sum_j w_exp[b, c*C_in + j] * x[b, j] of the block input x (B,C_in,F,T), computed band by
//     band and never stored.
//   AxisMeans(x (B,C,F,T)) -> (B,C,F+T): the means over T (per row) then over F (per column).
//   Stem(x (B,1,F,T), w (C,1,k,k), bias (C)) -> (B,C,F',T'): act(conv2d(x, w, bias, stride, pad)),
//     the model's first conv, written in the plain layout the first block's ops read.
// Computed in float32 (f16 / bf16 tensors, which OpenVINO's f16 precision hands in, are
// widened); no -ffast-math, so within float32 rounding of a float64 reference. Threads: those
// of the arena the CPU plugin runs the inference in (INFERENCE_NUM_THREADS) when built with
// TBB, else one. The ONNX frontend maps the nodes of domain "dymn.edge" (version 1) onto them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "openvino/core/extension.hpp"
#include "openvino/core/op_extension.hpp"
#include "openvino/core/type/bfloat16.hpp"
#include "openvino/core/type/float16.hpp"
#include "openvino/frontend/onnx/extension/conversion.hpp"
#include "openvino/op/op.hpp"

#ifdef DYMN_USE_TBB  // the builder defines it where the wheel ships TBB (the CPU plugin's threading)
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#endif

namespace dymn {

// ---------------------------------------------------------------------------------------
// shapes

// Length of a padded, strided window sweep over n elements (0 when the window does not fit).
static int64_t window_len(int64_t n, int64_t k, int64_t pad, int64_t stride) {
    const int64_t span = n + 2 * pad - k;
    return span < 0 ? 0 : span / stride + 1;
}

// The same over a (possibly dynamic, possibly bounded) dimension.
static ov::Dimension window_dim(const ov::Dimension& d, const ov::Dimension& k, int64_t pad, int64_t stride) {
    if (!k.is_static())
        return ov::Dimension::dynamic();
    const int64_t kk = k.get_length();
    if (d.is_static())
        return ov::Dimension(window_len(d.get_length(), kk, pad, stride));
    const int64_t lo = window_len(std::max<int64_t>(d.get_min_length(), 0), kk, pad, stride);
    const int64_t hi = d.get_max_length() < 0 ? -1 : window_len(d.get_max_length(), kk, pad, stride);
    return ov::Dimension(lo, hi);
}

// Merge b into a (the dims must agree where both are known).
static bool merge_into(ov::Dimension& a, const ov::Dimension& b) {
    return ov::Dimension::merge(a, a, b);
}

// f32 is the op's type; f16 / bf16 inputs (a plugin running the graph in half precision
// converts them so) are widened to f32 for the computation and the result narrowed back.
static bool float_type(const ov::element::Type& t) {
    return t == ov::element::f32 || t == ov::element::f16 || t == ov::element::bf16;
}

static bool float_or_dynamic(const ov::element::Type& t) {
    return float_type(t) || t.is_dynamic();
}

static ov::Tensor widened(const ov::Tensor& t) {
    if (t.get_element_type() == ov::element::f32)
        return t;
    ov::Tensor out(ov::element::f32, t.get_shape());
    float* dst = out.data<float>();
    const size_t n = t.get_size();
    if (t.get_element_type() == ov::element::f16) {
        const ov::float16* src = t.data<const ov::float16>();
        for (size_t i = 0; i < n; ++i)
            dst[i] = static_cast<float>(src[i]);
    } else {
        OPENVINO_ASSERT(t.get_element_type() == ov::element::bf16, "dymn-edge ops: unsupported type ",
                        t.get_element_type());
        const ov::bfloat16* src = t.data<const ov::bfloat16>();
        for (size_t i = 0; i < n; ++i)
            dst[i] = static_cast<float>(src[i]);
    }
    return out;
}

static void narrow_into(const ov::Tensor& src, ov::Tensor& dst) {
    dst.set_shape(src.get_shape());
    const float* in = src.data<const float>();
    const size_t n = src.get_size();
    if (dst.get_element_type() == ov::element::f16) {
        ov::float16* out = dst.data<ov::float16>();
        for (size_t i = 0; i < n; ++i)
            out[i] = ov::float16(in[i]);
    } else {
        ov::bfloat16* out = dst.data<ov::bfloat16>();
        for (size_t i = 0; i < n; ++i)
            out[i] = ov::bfloat16(in[i]);
    }
}

// Runs an f32 kernel on any float inputs / output (no copies when all are f32).
template <typename Fn>
static bool evaluate_as_f32(ov::TensorVector& outputs, const ov::TensorVector& inputs, Fn&& fn) {
    bool all_f32 = outputs[0].get_element_type() == ov::element::f32;
    for (const auto& t : inputs)
        all_f32 = all_f32 && t.get_element_type() == ov::element::f32;
    if (all_f32) {
        fn(outputs, inputs);
        return true;
    }
    ov::TensorVector in32, out32{ov::Tensor(ov::element::f32, ov::Shape{0})};
    for (const auto& t : inputs)
        in32.push_back(widened(t));
    fn(out32, in32);
    narrow_into(out32[0], outputs[0]);
    return true;
}

static bool all_float_inputs(const ov::Node& node) {
    for (size_t i = 0; i < node.get_input_size(); ++i)
        if (!float_type(node.get_input_element_type(i)))
            return false;
    return true;
}

// The output takes x's (att's) type: f32 unless a plugin narrowed the graph.
static ov::element::Type output_type(const ov::element::Type& t) {
    return t.is_dynamic() ? ov::element::f32 : t;
}

// Runs body(begin, end) over [0, count) in pieces of at least `grain` items: with TBB, on the
// threads of the arena the plugin runs the inference in (INFERENCE_NUM_THREADS; 1 = this
// thread alone), else in this thread. Pieces are independent: the result does not depend on
// the split.
template <typename Body>
static void for_ranges(int64_t count, int64_t grain, Body&& body) {
#ifdef DYMN_USE_TBB
    if (count > grain && tbb::this_task_arena::max_concurrency() > 1) {
        tbb::parallel_for(tbb::blocked_range<int64_t>(0, count, static_cast<size_t>(std::max<int64_t>(grain, 1))),
                          [&](const tbb::blocked_range<int64_t>& r) { body(r.begin(), r.end()); });
        return;
    }
#else
    (void)grain;
#endif
    body(0, count);
}

// ---------------------------------------------------------------------------------------
// MixBanks

class MixBanks : public ov::op::Op {
public:
    OPENVINO_OP("MixBanks", "dymn_edge");

    MixBanks() = default;
    explicit MixBanks(const ov::OutputVector& args) : Op(args) { constructor_validate_and_infer_types(); }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 2, "MixBanks takes 2 inputs (att, bank), got ",
                              get_input_size());
        for (size_t i = 0; i < 2; ++i)
            NODE_VALIDATION_CHECK(this, float_or_dynamic(get_input_element_type(i)), "MixBanks input ", i,
                                  " must be f32 (or f16 / bf16), got ", get_input_element_type(i));
        const auto& att = get_input_partial_shape(0);
        const auto& bank = get_input_partial_shape(1);
        NODE_VALIDATION_CHECK(this, att.rank().compatible(2) && bank.rank().compatible(2),
                              "MixBanks wants att (B, K) and bank (K, N), got ", att, " and ", bank);
        ov::Dimension batch = att.rank().is_static() ? att[0] : ov::Dimension::dynamic();
        ov::Dimension n = bank.rank().is_static() ? bank[1] : ov::Dimension::dynamic();
        if (att.rank().is_static() && bank.rank().is_static())
            NODE_VALIDATION_CHECK(this, att[1].compatible(bank[0]), "MixBanks: att ", att,
                                  " and bank ", bank, " disagree on K");
        set_output_type(0, output_type(get_input_element_type(0)), ov::PartialShape{batch, n});
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<MixBanks>(args);
    }

    bool visit_attributes(ov::AttributeVisitor&) override { return true; }

    bool has_evaluate() const override { return all_float_inputs(*this); }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
};

// out[i] (+)= sum_{r < R} a[r] * rows[r][i]: R bank rows in one pass over out.
template <int R, bool ACC>
static void mix_rows(const float* a, const float* const* rows, int64_t len, float* out) {
    float ar[R];
    const float* rr[R];
    for (int r = 0; r < R; ++r)
        ar[r] = a[r], rr[r] = rows[r];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
        float acc = ACC ? out[i] : 0.0f;
        for (int r = 0; r < R; ++r)
            acc += ar[r] * rr[r][i];
        out[i] = acc;
    }
}

using MixRowsFn = void (*)(const float*, const float* const*, int64_t, float*);

static MixRowsFn pick_mix_rows(int64_t r, bool acc) {
    static const MixRowsFn table[2][4] = {{mix_rows<1, false>, mix_rows<2, false>, mix_rows<3, false>, mix_rows<4, false>},
                                          {mix_rows<1, true>, mix_rows<2, true>, mix_rows<3, true>, mix_rows<4, true>}};
    return table[acc ? 1 : 0][r - 1];
}

// y (B, N) = att (B, K) @ bank (K, N): the K bank rows stream past once per column block (up to
// four at a time, so K = 4 writes y once), the block shared by the whole batch.
static void mix_banks(const float* att, const float* bank, float* y, int64_t batch, int64_t k_count,
                      int64_t n) {
    constexpr int64_t block = 2048;
    if (k_count == 0) {
        std::fill(y, y + batch * n, 0.0f);
        return;
    }
    const int64_t blocks = (n + block - 1) / block;
    for_ranges(blocks, 8, [&](int64_t first, int64_t last) {
        for (int64_t blk = first; blk < last; ++blk) {
            const int64_t n0 = blk * block, len = std::min(block, n - n0);
            for (int64_t b = 0; b < batch; ++b)
                for (int64_t k0 = 0; k0 < k_count; k0 += 4) {
                    const int64_t r = std::min<int64_t>(4, k_count - k0);
                    const float* rows[4];
                    for (int64_t q = 0; q < r; ++q)
                        rows[q] = bank + (k0 + q) * n + n0;
                    pick_mix_rows(r, k0 > 0)(att + b * k_count + k0, rows, len, y + b * n + n0);
                }
        }
    });
}

static void mix_banks_f32(ov::TensorVector& outputs, const ov::TensorVector& inputs) {
    const auto& att_shape = inputs[0].get_shape();
    const auto& bank_shape = inputs[1].get_shape();
    OPENVINO_ASSERT(att_shape.size() == 2 && bank_shape.size() == 2 && att_shape[1] == bank_shape[0],
                    "MixBanks: att ", att_shape, " and bank ", bank_shape, " do not multiply");
    const int64_t batch = att_shape[0], k_count = att_shape[1], n = bank_shape[1];
    outputs[0].set_shape(ov::Shape{att_shape[0], bank_shape[1]});
    mix_banks(inputs[0].data<const float>(), inputs[1].data<const float>(), outputs[0].data<float>(), batch,
              k_count, n);
}

bool MixBanks::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    return evaluate_as_f32(outputs, inputs, mix_banks_f32);
}

// ---------------------------------------------------------------------------------------
// AxisMeans

class AxisMeans : public ov::op::Op {
public:
    OPENVINO_OP("AxisMeans", "dymn_edge");

    AxisMeans() = default;
    explicit AxisMeans(const ov::OutputVector& args) : Op(args) { constructor_validate_and_infer_types(); }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 1, "AxisMeans takes 1 input (x), got ", get_input_size());
        NODE_VALIDATION_CHECK(this, float_or_dynamic(get_input_element_type(0)),
                              "AxisMeans input must be f32 (or f16 / bf16), got ", get_input_element_type(0));
        const auto& x = get_input_partial_shape(0);
        NODE_VALIDATION_CHECK(this, x.rank().compatible(4), "AxisMeans wants x (B, C, F, T), got ", x);
        ov::PartialShape y = ov::PartialShape::dynamic(3);
        if (x.rank().is_static())
            y = ov::PartialShape{x[0], x[1], x[2] + x[3]};
        set_output_type(0, output_type(get_input_element_type(0)), y);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<AxisMeans>(args);
    }

    bool visit_attributes(ov::AttributeVisitor&) override { return true; }

    bool has_evaluate() const override { return all_float_inputs(*this); }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
};

// One (F, T) plane: the row sums and the column sums in one pass (float accumulators: a
// vectorized partial sum per row, one running sum per column), divided at the end.
static void axis_means_plane(const float* x, int64_t f_in, int64_t t_in, float* cols, float* y) {
    std::fill(cols, cols + t_in, 0.0f);
    for (int64_t f = 0; f < f_in; ++f) {
        const float* row = x + f * t_in;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t t = 0; t < t_in; ++t) {
            s += row[t];
            cols[t] += row[t];
        }
        y[f] = s / static_cast<float>(t_in);
    }
    const float rows = static_cast<float>(f_in);
#pragma omp simd
    for (int64_t t = 0; t < t_in; ++t)
        y[f_in + t] = cols[t] / rows;
}

static void axis_means_f32(ov::TensorVector& outputs, const ov::TensorVector& inputs) {
    const auto& xs = inputs[0].get_shape();
    OPENVINO_ASSERT(xs.size() == 4, "AxisMeans: x ", xs, " is not (B, C, F, T)");
    const int64_t planes = xs[0] * xs[1], f_in = xs[2], t_in = xs[3];
    outputs[0].set_shape(ov::Shape{xs[0], xs[1], xs[2] + xs[3]});
    const float* x = inputs[0].data<const float>();
    float* y = outputs[0].data<float>();
    if (planes == 0 || f_in + t_in == 0)
        return;
    if (f_in == 0 || t_in == 0) {  // a mean over nothing, as NumPy / PyTorch give it
        std::fill(y, y + planes * (f_in + t_in), std::numeric_limits<float>::quiet_NaN());
        return;
    }
    for_ranges(planes, std::max<int64_t>(1, 16384 / (f_in * t_in)), [&](int64_t first, int64_t last) {
        std::vector<float> cols(static_cast<size_t>(t_in));
        for (int64_t p = first; p < last; ++p)
            axis_means_plane(x + p * f_in * t_in, f_in, t_in, cols.data(), y + p * (f_in + t_in));
    });
}

bool AxisMeans::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    return evaluate_as_f32(outputs, inputs, axis_means_f32);
}

// ---------------------------------------------------------------------------------------
// DyTail

enum Act : int64_t { kIdentity = 0, kRelu = 1, kHardswish = 2 };


// Shapes and attributes of DyTail and DyExpTail (expand: x is the block input (B, C_in, F, T) and
// w_exp (B, C * C_in) follows it; C comes from the other inputs).
static void validate_tail(ov::Node* node, bool expand, int64_t stride, int64_t pad, int64_t act, int64_t m) {
    const char* op = expand ? "DyExpTail" : "DyTail";
    const size_t count = expand ? 9 : 8, o = expand ? 1 : 0;  // o: where x_bias .. gate_t sit past DyTail's
    NODE_VALIDATION_CHECK(node, node->get_input_size() == count, op, " takes ", count, " inputs (",
                          expand ? "x, w_exp, " : "x, ", "x_bias, att, bank, bias, coef, gate_f, gate_t), got ",
                          node->get_input_size());
    NODE_VALIDATION_CHECK(node, stride >= 1 && pad >= 0 && m >= 1, op, ": stride ", stride, ", pad ", pad, ", m ",
                          m, " (want stride >= 1, pad >= 0, m >= 1)");
    NODE_VALIDATION_CHECK(node, act >= kIdentity && act <= kHardswish, op, ": act ", act,
                          " (0 identity, 1 relu, 2 hardswish)");
    static const int64_t ranks[8] = {4, 1, 2, 4, 1, 2, 4, 4};
    static const char* names[8] = {"x", "x_bias", "att", "bank", "bias", "coef", "gate_f", "gate_t"};
    auto idx = [o](size_t i) { return i == 0 ? 0 : i + o; };  // DyTail's input i -> this op's
    for (size_t i = 0; i < 8; ++i) {
        NODE_VALIDATION_CHECK(node, float_or_dynamic(node->get_input_element_type(idx(i))), op, " input ", names[i],
                              " must be f32 (or f16 / bf16), got ", node->get_input_element_type(idx(i)));
        NODE_VALIDATION_CHECK(node, node->get_input_partial_shape(idx(i)).rank().compatible(ranks[i]), op,
                              " input ", names[i], " must have rank ", ranks[i], ", got ",
                              node->get_input_partial_shape(idx(i)));
    }
    auto raw = [node](size_t input, size_t axis) {
        const auto& s = node->get_input_partial_shape(input);
        return s.rank().is_static() ? s[axis] : ov::Dimension::dynamic();
    };
    auto dim = [&](size_t i, size_t axis) { return raw(idx(i), axis); };
    ov::Dimension batch = dim(0, 0), channels = expand ? ov::Dimension::dynamic() : dim(0, 1), k = dim(3, 2),
                  kw = dim(3, 3);
    bool ok = merge_into(batch, dim(2, 0)) && merge_into(batch, dim(5, 0));
    NODE_VALIDATION_CHECK(node, ok, op, ": x, att and coef disagree on the batch");
    ok = merge_into(channels, dim(1, 0)) && merge_into(channels, dim(3, 1)) && merge_into(channels, dim(4, 0));
    NODE_VALIDATION_CHECK(node, ok, op, expand ? ": x_bias, bank and bias" : ": x, x_bias, bank and bias",
                          " disagree on the channels");
    NODE_VALIDATION_CHECK(node, merge_into(k, kw), op, ": the bank's kernel must be square, got ",
                          node->get_input_partial_shape(idx(3)));
    NODE_VALIDATION_CHECK(node, dim(2, 1).compatible(dim(3, 0)), op, ": att and bank disagree on K");
    if (channels.is_static() && dim(5, 1).is_static())
        NODE_VALIDATION_CHECK(node, dim(5, 1).get_length() == 2 * m * channels.get_length(), op, ": coef has ",
                              dim(5, 1), " columns, want 2 * m * C = ", 2 * m * channels.get_length());
    // F', T' from x and the attrs, narrowed by what the gates know (they are (B, C, F', 1), (B, C, 1, T'))
    ov::Dimension f_out = window_dim(dim(0, 2), k, pad, stride);
    ov::Dimension t_out = window_dim(dim(0, 3), k, pad, stride);
    for (size_t gate = 6; gate < 8; ++gate) {
        ok = merge_into(batch, dim(gate, 0)) && merge_into(channels, dim(gate, 1)) &&
             (gate == 6 ? merge_into(f_out, dim(6, 2)) && dim(6, 3).compatible(1)
                        : merge_into(t_out, dim(7, 3)) && dim(7, 2).compatible(1));
        NODE_VALIDATION_CHECK(node, ok, op, ": ", names[gate], " ", node->get_input_partial_shape(idx(gate)),
                              " is not ", gate == 6 ? "(B, C, F', 1)" : "(B, C, 1, T')", " for x ",
                              node->get_input_partial_shape(0), " (F' = ", f_out, ", T' = ", t_out, ")");
    }
    if (expand) {
        NODE_VALIDATION_CHECK(node, float_or_dynamic(node->get_input_element_type(1)),
                              "DyExpTail input w_exp must be f32 (or f16 / bf16), got ",
                              node->get_input_element_type(1));
        NODE_VALIDATION_CHECK(node, node->get_input_partial_shape(1).rank().compatible(2),
                              "DyExpTail input w_exp must have rank 2, got ", node->get_input_partial_shape(1));
        const ov::Dimension c_in = raw(0, 1), wb = raw(1, 0), wn = raw(1, 1);
        NODE_VALIDATION_CHECK(node, merge_into(batch, wb), "DyExpTail: x and w_exp disagree on the batch");
        if (channels.is_static() && c_in.is_static() && wn.is_static())
            NODE_VALIDATION_CHECK(node, wn.get_length() == channels.get_length() * c_in.get_length(),
                                  "DyExpTail: w_exp has ", wn, " columns, want C * C_in = ",
                                  channels.get_length() * c_in.get_length());
    }
    node->set_output_type(0, output_type(node->get_input_element_type(0)),
                          ov::PartialShape{batch, channels, f_out, t_out});
}

// DyTail and DyExpTail: the same attributes, shape rules and evaluate entry; Expand says
// whether x is the block input with its per-sample expansion kernel w_exp next to it.
template <class Derived, bool Expand>
class TailOp : public ov::op::Op {
public:
    TailOp() = default;
    TailOp(const ov::OutputVector& args, int64_t stride, int64_t pad, int64_t act, int64_t m)
        : Op(args), m_stride(stride), m_pad(pad), m_act(act), m_m(m) {}

    void validate_and_infer_types() override { validate_tail(this, Expand, m_stride, m_pad, m_act, m_m); }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<Derived>(args, m_stride, m_pad, m_act, m_m);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("stride", m_stride);
        visitor.on_attribute("pad", m_pad);
        visitor.on_attribute("act", m_act);
        visitor.on_attribute("m", m_m);
        return true;
    }

    bool has_evaluate() const override { return all_float_inputs(*this); }

protected:
    int64_t m_stride = 1;
    int64_t m_pad = 0;
    int64_t m_act = kIdentity;
    int64_t m_m = 2;
};

class DyTail : public TailOp<DyTail, false> {
public:
    OPENVINO_OP("DyTail", "dymn_edge");

    DyTail() = default;
    DyTail(const ov::OutputVector& args, int64_t stride, int64_t pad, int64_t act, int64_t m)
        : TailOp(args, stride, pad, act, m) {
        constructor_validate_and_infer_types();
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
    void evaluate_f32(ov::TensorVector& outputs, const ov::TensorVector& inputs) const;
};

class DyExpTail : public TailOp<DyExpTail, true> {
public:
    OPENVINO_OP("DyExpTail", "dymn_edge");

    DyExpTail() = default;
    DyExpTail(const ov::OutputVector& args, int64_t stride, int64_t pad, int64_t act, int64_t m)
        : TailOp(args, stride, pad, act, m) {
        constructor_validate_and_infer_types();
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
    void evaluate_f32(ov::TensorVector& outputs, const ov::TensorVector& inputs) const;
};




// The geometry of one evaluate call. The activated, zero-padded input of one (b, c) is held
// as stride x stride phase planes: phase (pr, pc) holds padded element (S*r + pr, S*c + pc), so
// a strided tap reads a contiguous run and output row f' of tap row i is row f' + i/S of phase
// i%S. Output rows are computed in chunks that read the planes as one flat run (the few
// columns past T' in each row are computed and dropped), which keeps short rows vectorized.
struct TailGeom {
    int64_t batch, channels, f_in, t_in, k, k_count, f_out, t_out, stride, pad, m;
    int64_t phase_rows;   // rows of one phase plane
    int64_t pitch;        // floats per phase-plane row
    int64_t phase_size;   // floats per phase plane
    int64_t chunk_rows;   // output rows per flat run
};

// exp(v) for the gates, written so a loop of it vectorizes (libm's expf is a scalar call): a
// Cody-Waite reduction to r in [-ln2/2, ln2/2] and a degree-6 polynomial (the Cephes expf
// coefficients), within ~2 ulp of expf; v is clamped to the range where 2^n stays normal.
static inline float exp_vec(float v) {
    v = std::min(std::max(v, -87.3f), 88.3f);
    // n = round(v / ln2) by the 1.5 * 2^23 trick (floor / branches would not vectorize)
    const float n = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (v - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
#define DYMN_HAVE_BIT_CAST 1
#endif
#endif
#ifdef DYMN_HAVE_BIT_CAST
    return p * __builtin_bit_cast(float, bits);  // (GCC >= 11, clang >= 9) vectorizes; memcpy does not
#else
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
#endif
}

template <int ACT>
static inline float act_fn(float v) {
    if (ACT == kRelu)
        return std::max(v, 0.0f);
    if (ACT == kHardswish)
        return v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f;
    return v;
}

// One input row of act(x + x_bias) into its phase-plane rows (S: the stride; 0 = any). At
// stride 2 the even and odd columns are split in one loop (interleaved loads vectorize).
template <int ACT, int S>
static void fill_row(const float* src, float xb, const TailGeom& g, float* row0) {
    if (S == 1) {
        float* dst = row0 + g.pad;
#pragma omp simd
        for (int64_t t = 0; t < g.t_in; ++t)
            dst[t] = act_fn<ACT>(src[t] + xb);
    } else if (S == 2) {
        // input column t sits at padded column t + pad: phase (t + pad) % 2, index (t + pad) / 2
        float* even = row0 + (g.pad & 1) * g.phase_size + g.pad / 2;            // t = 2i
        float* odd = row0 + ((g.pad + 1) & 1) * g.phase_size + (g.pad + 1) / 2;  // t = 2i + 1
        const int64_t half = g.t_in / 2;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
            even[i] = act_fn<ACT>(src[2 * i] + xb);
            odd[i] = act_fn<ACT>(src[2 * i + 1] + xb);
        }
        if (g.t_in & 1)
            even[half] = act_fn<ACT>(src[g.t_in - 1] + xb);
    } else {
        const int64_t s = g.stride;
        for (int64_t pc = 0; pc < s; ++pc) {
            // input columns t with (t + pad) % s == pc land at phase column (t + pad) / s
            const int64_t t0 = ((pc - g.pad) % s + s) % s;
            float* dst = row0 + pc * g.phase_size + (t0 + g.pad) / s;
            for (int64_t i = 0; t0 + i * s < g.t_in; ++i)
                dst[i] = act_fn<ACT>(src[t0 + i * s] + xb);
        }
    }
}

// Writes act(x + x_bias) of one (b, c) into the phase planes (the zero border, written once per
// call, is never touched).
template <int ACT, int S>
static void fill_planes(const float* x, float xb, const TailGeom& g, float* planes) {
    const int64_t s = g.stride;
    for (int64_t f = 0; f < g.f_in; ++f) {
        const int64_t r = f + g.pad;
        // phase row r % s (its column phases follow at phase_size apart), row r / s
        fill_row<ACT, S>(x + f * g.t_in, xb, g, planes + (r % s) * s * g.phase_size + (r / s) * g.pitch);
    }
}

// d[q] = bias + sum_ij w_ij * tap_ij[q] over a flat run of n outputs (K, S known at compile time).
template <int K, int S>
static void conv_run(const float* planes, const TailGeom& g, const float* w, float bias, int64_t n, float* d) {
    const float* rp[K][S];
    for (int i = 0; i < K; ++i)
        for (int pc = 0; pc < S; ++pc)
            rp[i][pc] = planes + ((i % S) * S + pc) * g.phase_size + (i / S) * g.pitch;
    float wk[K * K];
    for (int i = 0; i < K * K; ++i)
        wk[i] = w[i];
#pragma omp simd
    for (int64_t q = 0; q < n; ++q) {
        float acc = bias;
        for (int i = 0; i < K; ++i)
            for (int j = 0; j < K; ++j)
                acc += wk[i * K + j] * rp[i][j % S][q + j / S];
        d[q] = acc;
    }
}

// Any kernel size and stride.
static void conv_run_generic(const float* planes, const TailGeom& g, const float* w, float bias, int64_t n,
                             float* d) {
    const int64_t s = g.stride;
    std::fill(d, d + n, bias);
    for (int64_t i = 0; i < g.k; ++i)
        for (int64_t j = 0; j < g.k; ++j) {
            const float* tap = planes + ((i % s) * s + j % s) * g.phase_size + (i / s) * g.pitch + j / s;
            const float wij = w[i * g.k + j];
#pragma omp simd
            for (int64_t q = 0; q < n; ++q)
                d[q] += wij * tap[q];
        }
}

// out[t] = max_j (a_j * d[t] + b_j) * gate_f * gate_t[t]   (M maps known at compile time; 0: m)
template <int M>
static void epilogue(const float* d, int64_t n, int m, const float* a, const float* b, float gate_f,
                     const float* gate_t, float* out) {
    const int maps = M > 0 ? M : m;
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) {
        const float v = d[t];
        float z = a[0] * v + b[0];
        for (int j = 1; j < maps; ++j)
            z = std::max(z, a[j] * v + b[j]);
        out[t] = z * gate_f * gate_t[t];
    }
}

using ConvFn = void (*)(const float*, const TailGeom&, const float*, float, int64_t, float*);
using EpiFn = void (*)(const float*, int64_t, int, const float*, const float*, float, const float*, float*);
using FillFn = void (*)(const float*, float, const TailGeom&, float*);

static ConvFn pick_conv(int64_t k, int64_t s) {
    if (k == 3 && s == 1)
        return conv_run<3, 1>;
    if (k == 3 && s == 2)
        return conv_run<3, 2>;
    if (k == 5 && s == 1)
        return conv_run<5, 1>;
    if (k == 5 && s == 2)
        return conv_run<5, 2>;
    return conv_run_generic;
}

static EpiFn pick_epilogue(int64_t m) {
    return m == 1 ? epilogue<1> : m == 2 ? epilogue<2> : epilogue<0>;
}

template <int S>
static FillFn pick_fill_s(int64_t act) {
    return act == kRelu ? fill_planes<kRelu, S> : act == kHardswish ? fill_planes<kHardswish, S>
                                                                   : fill_planes<kIdentity, S>;
}

static FillFn pick_fill(int64_t act, int64_t stride) {
    return stride == 1 ? pick_fill_s<1>(act) : stride == 2 ? pick_fill_s<2>(act) : pick_fill_s<0>(act);
}

// xs: the (B, C, F, T) the tail reads; in[o + i]: DyTail's input i (o = 1 past DyExpTail's w_exp).
static TailGeom tail_geometry(const ov::Shape& xs, const ov::TensorVector& in, size_t o, int64_t stride, int64_t pad,
                              int64_t m) {
    const auto& bank = in[o + 3].get_shape();
    OPENVINO_ASSERT(xs.size() == 4 && bank.size() == 4 && bank[2] == bank[3] && bank[1] == xs[1],
                    "DyTail: x ", xs, " and bank ", bank, " do not match");
    TailGeom g{};
    g.batch = xs[0], g.channels = xs[1], g.f_in = xs[2], g.t_in = xs[3];
    g.k = bank[2], g.k_count = bank[0], g.stride = stride, g.pad = pad, g.m = m;
    g.f_out = window_len(g.f_in, g.k, pad, stride);
    g.t_out = window_len(g.t_in, g.k, pad, stride);
    const ov::Shape want[8] = {
        xs, {xs[1]}, {xs[0], bank[0]}, bank, {xs[1]}, {xs[0], static_cast<size_t>(2 * m) * xs[1]},
        {xs[0], xs[1], static_cast<size_t>(g.f_out), 1}, {xs[0], xs[1], 1, static_cast<size_t>(g.t_out)}};
    for (size_t i = 1; i < 8; ++i)
        OPENVINO_ASSERT(in[o + i].get_shape() == want[i], "DyTail: input ", o + i, " has shape ",
                        in[o + i].get_shape(), ", want ", want[i]);
    g.phase_rows = (g.f_in + 2 * pad + stride - 1) / stride;
    g.pitch = (g.t_in + 2 * pad + stride - 1) / stride;
    g.phase_size = g.phase_rows * g.pitch;
    g.chunk_rows = std::min<int64_t>(std::max<int64_t>(1, 256 / g.pitch), std::max<int64_t>(g.f_out, 1));
    return g;
}

//: floats of zeros after the planes, the run buffer and the gates, so runs round up to whole vectors
constexpr int64_t kSlack = 16;

// sigmoid of a gate, once per call.
static void gate_sigmoids(const float* src, int64_t count, std::vector<float>& dst) {
    dst.assign(static_cast<size_t>(count + kSlack), 0.0f);  // slack: read by whole-vector short rows
    float* out = dst.data();
#pragma omp simd
    for (int64_t i = 0; i < count; ++i)
        out[i] = 1.0f / (1.0f + exp_vec(-src[i]));
}

// The (F', T') output plane of one (b, c) from its filled phase planes, chunk by chunk.
static void tail_plane(const float* planes, const TailGeom& g, ConvFn conv, EpiFn epi, const float* w, float bias,
                       const float* a, const float* b, const float* sig_f, const float* sig_t, float* d, float* out) {
    const int64_t plane_size = g.f_out * g.t_out;
    for (int64_t f0 = 0; f0 < g.f_out; f0 += g.chunk_rows) {
        const int64_t rows = std::min(g.chunk_rows, g.f_out - f0);
        // a whole number of vectors: the scalar tail of a short run costs as much as the run
        const int64_t n = ((rows - 1) * g.pitch + g.t_out + kSlack - 1) / kSlack * kSlack;
        conv(planes + f0 * g.pitch, g, w, bias, n, d);
        for (int64_t r = 0; r < rows; ++r) {
            // Short rows also run as whole vectors where that stays inside this plane's output:
            // the extra values land on the next rows, which are written after (rows go in order;
            // another thread never owns them), and read d / sig_t within their slack.
            const int64_t at = (f0 + r) * g.t_out, whole = (g.t_out + kSlack - 1) / kSlack * kSlack;
            const int64_t len = at + whole <= plane_size ? whole : g.t_out;
            epi(d + r * g.pitch, len, static_cast<int>(g.m), a, b, sig_f[f0 + r], sig_t, out + at);
        }
    }
}

bool DyTail::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    return evaluate_as_f32(outputs, inputs, [this](ov::TensorVector& out, const ov::TensorVector& in) {
        evaluate_f32(out, in);
    });
}

void DyTail::evaluate_f32(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const TailGeom g = tail_geometry(inputs[0].get_shape(), inputs, 0, m_stride, m_pad, m_m);
    outputs[0].set_shape(ov::Shape{static_cast<size_t>(g.batch), static_cast<size_t>(g.channels),
                                   static_cast<size_t>(g.f_out), static_cast<size_t>(g.t_out)});
    if (g.batch * g.channels * g.f_out * g.t_out == 0)
        return;
    const float* x = inputs[0].data<const float>();
    const float* x_bias = inputs[1].data<const float>();
    const float* bias = inputs[4].data<const float>();
    const float* coef = inputs[5].data<const float>();
    float* y = outputs[0].data<float>();
    const int64_t kk = g.k * g.k, plane_in = g.f_in * g.t_in, plane_out = g.f_out * g.t_out;
    // every sample's C kernels at once: att (B, K) @ bank (K, C*k*k); the gates' sigmoids
    std::vector<float> w(static_cast<size_t>(g.batch * g.channels * kk)), sig_f, sig_t;
    mix_banks(inputs[2].data<const float>(), inputs[3].data<const float>(), w.data(), g.batch, g.k_count,
              g.channels * kk);
    gate_sigmoids(inputs[6].data<const float>(), g.batch * g.channels * g.f_out, sig_f);
    gate_sigmoids(inputs[7].data<const float>(), g.batch * g.channels * g.t_out, sig_t);
    const ConvFn conv = pick_conv(g.k, g.stride);
    const EpiFn epi = pick_epilogue(m_m);
    const FillFn fill = pick_fill(m_act, g.stride);
    const int64_t m = m_m, grain = std::max<int64_t>(1, 16384 / (plane_in + plane_out * kk));
    for_ranges(g.batch * g.channels, grain, [&](int64_t first, int64_t last) {
        std::vector<float> planes(static_cast<size_t>(g.stride * g.stride * g.phase_size + kSlack), 0.0f);
        std::vector<float> d(static_cast<size_t>(g.chunk_rows * g.pitch + kSlack)), a(m), b(m);
        for (int64_t bc = first; bc < last; ++bc) {
            const int64_t bi = bc / g.channels, c = bc % g.channels;
            const float* coef_b = coef + bi * 2 * m * g.channels;
            for (int64_t j = 0; j < m; ++j) {
                a[j] = coef_b[j * g.channels + c];
                b[j] = coef_b[(m + j) * g.channels + c];
            }
            fill(x + bc * plane_in, x_bias[c], g, planes.data());
            tail_plane(planes.data(), g, conv, epi, w.data() + bc * kk, bias[c], a.data(), b.data(),
                       sig_f.data() + bc * g.f_out, sig_t.data() + bc * g.t_out, d.data(), y + bc * plane_out);
        }
    });
}

// ---------------------------------------------------------------------------------------
// DyExpTail: DyTail on the block's expansion, computed band by band, never stored

// The expansion's register block: kExpGroup channels x kExpWidth positions of sums (each input
// vector loaded once for the group). AVX-512: 8 x 32 in 16 zmm registers (16-lane vectors asked
// for, which GCC would not pick by itself); other x86: 4 x 32 in 16 ymm; aarch64: 4 x 16 in 16
// of NEON's 32 registers.
#if defined(__AVX512F__)
constexpr int kExpGroup = 8;
constexpr int kExpWidth = 32;
#define DYMN_EXP_SIMD _Pragma("omp simd simdlen(16)")
#elif defined(__aarch64__)
constexpr int kExpGroup = 4;
constexpr int kExpWidth = 16;
#define DYMN_EXP_SIMD _Pragma("omp simd")
#else
constexpr int kExpGroup = 4;
constexpr int kExpWidth = 32;
#define DYMN_EXP_SIMD _Pragma("omp simd")
#endif
//: floats of block input one band may span (the C_in rows it reads stay in L2 for all channels)
constexpr int64_t kBandInputFloats = 128 * 1024;

// out[q * ld + t0 + v] = sum_j w[q * c_in + j] * rows[j][t0 + v], v < n <= W, for the G channels of a
// group: the G x W sums stay in registers over all C_in input rows, each input vector loaded once
// for the G channels (W fixed: the loops unroll; FULL: n = W).
template <int G, int W, bool FULL>
static void expand_block(const float* const* rows, int64_t c_in, const float* w, int64_t t0, int64_t n, float* out,
                         int64_t ld) {
    float acc[G][W] = {};
    const int64_t len = FULL ? W : n;
    for (int64_t j = 0; j < c_in; ++j) {
        const float* r = rows[j] + t0;
        for (int q = 0; q < G; ++q) {
            const float wq = w[q * c_in + j];
            DYMN_EXP_SIMD
            for (int64_t v = 0; v < len; ++v)
                acc[q][v] += wq * r[v];
        }
    }
    for (int q = 0; q < G; ++q)
        std::copy(acc[q], acc[q] + len, out + q * ld + t0);
}

// The expansion of G channels over a run of t_in positions: whole register blocks, then one of
// 16 and 8 positions (short planes are mostly tail), then the last few.
template <int G>
static void expand_rows(const float* const* rows, int64_t c_in, const float* w, int64_t t_in, float* out,
                        int64_t ld) {
    int64_t t0 = 0;
    for (; t0 + kExpWidth <= t_in; t0 += kExpWidth)
        expand_block<G, kExpWidth, true>(rows, c_in, w, t0, kExpWidth, out, ld);
    if (kExpWidth > 16 && t0 + 16 <= t_in) {
        expand_block<G, 16, true>(rows, c_in, w, t0, 16, out, ld);
        t0 += 16;
    }
    if (t0 + 8 <= t_in) {
        expand_block<G, 8, true>(rows, c_in, w, t0, 8, out, ld);
        t0 += 8;
    }
    if (t0 < t_in)
        expand_block<G, 8, false>(rows, c_in, w, t0, t_in - t0, out, ld);
}

using RowFn = void (*)(const float*, float, const TailGeom&, float*);

template <int S>
static RowFn pick_row_s(int64_t act) {
    return act == kRelu ? fill_row<kRelu, S> : act == kHardswish ? fill_row<kHardswish, S> : fill_row<kIdentity, S>;
}

static RowFn pick_row(int64_t act, int64_t stride) {
    return stride == 1 ? pick_row_s<1>(act) : stride == 2 ? pick_row_s<2>(act) : pick_row_s<0>(act);
}

bool DyExpTail::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    return evaluate_as_f32(outputs, inputs, [this](ov::TensorVector& out, const ov::TensorVector& in) {
        evaluate_f32(out, in);
    });
}

// Bands of output rows: for one band the C_in input rows it needs are read from cache by every
// channel; each channel's expanded rows of the band (band * stride + k - stride of them, the
// halo recomputed) go into its phase planes and the DyTail plane code runs on them.
void DyExpTail::evaluate_f32(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const auto& xs = inputs[0].get_shape();
    OPENVINO_ASSERT(xs.size() == 4 && inputs[2].get_shape().size() == 1, "DyExpTail: x ", xs, " and x_bias ",
                    inputs[2].get_shape(), " are not (B, C_in, F, T) and (C)");
    const ov::Shape ts{xs[0], inputs[2].get_shape()[0], xs[2], xs[3]};
    const TailGeom g = tail_geometry(ts, inputs, 1, m_stride, m_pad, m_m);
    const int64_t c_in = xs[1];
    OPENVINO_ASSERT(inputs[1].get_shape() == (ov::Shape{xs[0], ts[1] * xs[1]}), "DyExpTail: w_exp ",
                    inputs[1].get_shape(), " is not (B, C * C_in) = ", ov::Shape{xs[0], ts[1] * xs[1]});
    outputs[0].set_shape(ov::Shape{static_cast<size_t>(g.batch), static_cast<size_t>(g.channels),
                                   static_cast<size_t>(g.f_out), static_cast<size_t>(g.t_out)});
    if (g.batch * g.channels * g.f_out * g.t_out == 0)
        return;
    const float* x = inputs[0].data<const float>();
    const float* w_exp = inputs[1].data<const float>();
    const float* x_bias = inputs[2].data<const float>();
    const float* bias = inputs[5].data<const float>();
    const float* coef = inputs[6].data<const float>();
    float* y = outputs[0].data<float>();
    const int64_t kk = g.k * g.k, plane_out = g.f_out * g.t_out, s = g.stride;
    std::vector<float> w(static_cast<size_t>(g.batch * g.channels * kk)), sig_f, sig_t;
    mix_banks(inputs[3].data<const float>(), inputs[4].data<const float>(), w.data(), g.batch, g.k_count,
              g.channels * kk);
    gate_sigmoids(inputs[7].data<const float>(), g.batch * g.channels * g.f_out, sig_f);
    gate_sigmoids(inputs[8].data<const float>(), g.batch * g.channels * g.t_out, sig_t);
    // the expansion kernels in groups of kExpGroup channels (zero rows past C)
    constexpr int G = kExpGroup;
    const int64_t groups = (g.channels + G - 1) / G;
    std::vector<float> wexp(static_cast<size_t>(g.batch * groups * G * c_in), 0.0f);
    for (int64_t b = 0; b < g.batch; ++b)
        std::copy(w_exp + b * g.channels * c_in, w_exp + (b + 1) * g.channels * c_in,
                  wexp.begin() + b * groups * G * c_in);
    // band rows: as many as the input budget allows, at least enough that the recomputed halo
    // (k - stride rows) stays a quarter of the band's rows
    const int64_t fit = (std::max<int64_t>(kBandInputFloats / std::max<int64_t>(c_in * g.t_in, 1), g.k) - g.k) / s + 1;
    const int64_t band = std::min(g.f_out, std::max<int64_t>({fit, 4 * (g.k - s) / s, 1}));
    const int64_t bands = (g.f_out + band - 1) / band;
    TailGeom gb = g;
    gb.phase_rows = ((band - 1) * s + g.k + s - 1) / s;
    gb.phase_size = gb.phase_rows * gb.pitch;
    gb.chunk_rows = std::min(g.chunk_rows, band);
    const int64_t plane_stride = s * s * gb.phase_size;
    const ConvFn conv = pick_conv(g.k, s);
    const EpiFn epi = pick_epilogue(m_m);
    const RowFn fill = pick_row(m_act, s);
    const int64_t m = m_m;
    const int64_t work = G * (((band - 1) * s + g.k) * g.t_in * (c_in + 1) + band * g.t_out * kk);
    for_ranges(g.batch * bands * groups, std::max<int64_t>(1, 65536 / work), [&](int64_t first, int64_t last) {
        std::vector<float> planes(static_cast<size_t>(G * plane_stride + kSlack), 0.0f);
        const int64_t u_len = ((band - 1) * s + g.k) * g.t_in;  // the most expanded floats of one band and channel
        std::vector<float> u(static_cast<size_t>(G * u_len));
        std::vector<float> d(static_cast<size_t>(gb.chunk_rows * gb.pitch + kSlack)), a(m), bb(m);
        std::vector<const float*> rows(static_cast<size_t>(c_in));
        for (int64_t item = first; item < last; ++item) {
            const int64_t bi = item / (bands * groups), bd = item / groups % bands, gr = item % groups;
            const int64_t f0 = bd * band, out_rows = std::min(band, g.f_out - f0);
            const int64_t c0 = gr * G, live = std::min<int64_t>(G, g.channels - c0);
            const float* wg = wexp.data() + (bi * groups + gr) * G * c_in;
            // the band's input rows [f_lo, f_hi) are one contiguous run per input channel
            const int64_t u_rows = (out_rows - 1) * s + g.k, top = f0 * s - g.pad;
            const int64_t f_lo = std::max<int64_t>(0, top), f_hi = std::min(g.f_in, top + u_rows);
            if (f_hi > f_lo) {
                for (int64_t j = 0; j < c_in; ++j)
                    rows[j] = x + ((bi * c_in + j) * g.f_in + f_lo) * g.t_in;
                expand_rows<G>(rows.data(), c_in, wg, (f_hi - f_lo) * g.t_in, u.data(), u_len);
            }
            for (int64_t rl = 0; rl < u_rows; ++rl) {
                const int64_t f = f0 * s + rl - g.pad;  // the input row of padded band row rl
                const int64_t at = (rl % s) * s * gb.phase_size + (rl / s) * gb.pitch;
                if (f < 0 || f >= g.f_in) {  // a padding row: zeros in every column phase
                    for (int64_t q = 0; q < live; ++q)
                        for (int64_t pc = 0; pc < s; ++pc)
                            std::fill_n(planes.data() + q * plane_stride + at + pc * gb.phase_size, gb.pitch, 0.0f);
                    continue;
                }
                for (int64_t q = 0; q < live; ++q)
                    fill(u.data() + q * u_len + (f - f_lo) * g.t_in, x_bias[c0 + q], gb,
                         planes.data() + q * plane_stride + at);
            }
            TailGeom gl = gb;
            gl.f_out = out_rows;
            gl.chunk_rows = std::min(gb.chunk_rows, out_rows);
            for (int64_t q = 0; q < live; ++q) {
                const int64_t c = c0 + q, bc = bi * g.channels + c;
                const float* coef_b = coef + bi * 2 * m * g.channels;
                for (int64_t j = 0; j < m; ++j) {
                    a[j] = coef_b[j * g.channels + c];
                    bb[j] = coef_b[(m + j) * g.channels + c];
                }
                tail_plane(planes.data() + q * plane_stride, gl, conv, epi, w.data() + bc * kk, bias[c], a.data(),
                           bb.data(), sig_f.data() + bc * g.f_out + f0, sig_t.data() + bc * g.t_out, d.data(),
                           y + bc * plane_out + f0 * g.t_out);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// Stem

// y = act(conv2d(x, w, bias, stride, pad)) for a single-channel input x (B, 1, F, T) and w
// (C, 1, k, k), written in the plain layout the first block's operators read (OpenVINO's own
// conv writes a blocked layout there and reorders it, a full extra pass over the largest tensor).
class Stem : public ov::op::Op {
public:
    OPENVINO_OP("Stem", "dymn_edge");

    Stem() = default;
    Stem(const ov::OutputVector& args, int64_t stride, int64_t pad, int64_t act)
        : Op(args), m_stride(stride), m_pad(pad), m_act(act) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 3, "Stem takes 3 inputs (x, w, bias), got ", get_input_size());
        for (size_t i = 0; i < 3; ++i)
            NODE_VALIDATION_CHECK(this, float_or_dynamic(get_input_element_type(i)), "Stem input ", i,
                                  " must be f32 (or f16 / bf16), got ", get_input_element_type(i));
        NODE_VALIDATION_CHECK(this, m_stride >= 1 && m_pad >= 0, "Stem: stride ", m_stride, " / pad ", m_pad,
                              " out of range");
        NODE_VALIDATION_CHECK(this, m_act >= kIdentity && m_act <= kHardswish, "Stem: act ", m_act,
                              " is not 0 (identity), 1 (relu) or 2 (hardswish)");
        const auto& x = get_input_partial_shape(0);
        const auto& w = get_input_partial_shape(1);
        const auto& b = get_input_partial_shape(2);
        NODE_VALIDATION_CHECK(this, x.rank().compatible(4) && w.rank().compatible(4) && b.rank().compatible(1),
                              "Stem wants x (B, 1, F, T), w (C, 1, k, k), bias (C), got ", x, ", ", w, ", ", b);
        ov::PartialShape y = ov::PartialShape::dynamic(4);
        if (w.rank().is_static()) {
            NODE_VALIDATION_CHECK(this, w[1].compatible(1) && w[2].compatible(w[3]),
                                  "Stem wants w (C, 1, k, k), got ", w);
            if (b.rank().is_static())
                NODE_VALIDATION_CHECK(this, b[0].compatible(w[0]), "Stem: bias ", b, " and w ", w, " disagree on C");
        }
        if (x.rank().is_static()) {
            NODE_VALIDATION_CHECK(this, x[1].compatible(1), "Stem wants one input channel, got x ", x);
            ov::Dimension c = w.rank().is_static() ? w[0] : ov::Dimension::dynamic();
            if (w.rank().is_static() && w[2].is_static()) {
                const int64_t k = w[2].get_length();
                y = ov::PartialShape{x[0], c, window_dim(x[2], k, m_pad, m_stride), window_dim(x[3], k, m_pad, m_stride)};
            } else {
                y = ov::PartialShape{x[0], c, ov::Dimension::dynamic(), ov::Dimension::dynamic()};
            }
        }
        set_output_type(0, output_type(get_input_element_type(0)), y);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<Stem>(args, m_stride, m_pad, m_act);
    }

    bool visit_attributes(ov::AttributeVisitor& v) override {
        v.on_attribute("stride", m_stride);
        v.on_attribute("pad", m_pad);
        v.on_attribute("act", m_act);
        return true;
    }

    bool has_evaluate() const override { return all_float_inputs(*this); }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;

private:
    int64_t m_stride = 2, m_pad = 1, m_act = kHardswish;
};

// k = 3, stride 2: output t reads input columns 2t - pad + {0, 1, 2}, i.e. a[t], b[t], a[t + 1]
// with a[t] = col 2t - pad and b[t] = col 2t - pad + 1. Every input row is split into its a and
// b rows once (zero outside the input); then each channel of an output row is nine contiguous
// multiply-adds per output, which vectorize.
static void split_row(const float* row, int64_t t_in, int64_t first_col, int64_t n, float* dst) {
    // dst[t] = row[first_col + 2t] where that is inside the row, else 0
    int64_t lo = first_col < 0 ? (-first_col + 1) / 2 : 0;
    int64_t hi = first_col >= t_in ? 0 : std::min<int64_t>(n, (t_in - first_col + 1) / 2);
    lo = std::min(lo, n);
    hi = std::max(hi, lo);
    std::fill(dst, dst + lo, 0.0f);
#pragma omp simd
    for (int64_t t = lo; t < hi; ++t)
        dst[t] = row[first_col + 2 * t];
    std::fill(dst + hi, dst + n, 0.0f);
}

template <int ACT>
static void stem_row_k3s2(const float* a_rows[3], const float* b_rows[3], const float* w, const float* bias,
                          int64_t c_out, int64_t t_out, int64_t plane, float* y) {
    const float* a0 = a_rows[0];
    const float* a1 = a_rows[1];
    const float* a2 = a_rows[2];
    const float* b0 = b_rows[0];
    const float* b1 = b_rows[1];
    const float* b2 = b_rows[2];
    for (int64_t c = 0; c < c_out; ++c) {
        const float* wc = w + c * 9;
        const float w0 = wc[0], w1 = wc[1], w2 = wc[2], w3 = wc[3], w4 = wc[4], w5 = wc[5], w6 = wc[6], w7 = wc[7],
                    w8 = wc[8], bc = bias[c];
        float* out = y + c * plane;
#pragma omp simd
        for (int64_t t = 0; t < t_out; ++t) {
            float acc = bc;
            acc += w0 * a0[t] + w1 * b0[t] + w2 * a0[t + 1];
            acc += w3 * a1[t] + w4 * b1[t] + w5 * a1[t + 1];
            acc += w6 * a2[t] + w7 * b2[t] + w8 * a2[t + 1];
            out[t] = act_fn<ACT>(acc);
        }
    }
}

template <int ACT>
static void stem_k3s2(const float* x, const float* w, const float* bias, float* y, int64_t batch, int64_t f_in,
                      int64_t t_in, int64_t c_out, int64_t pad) {
    const int64_t f_out = window_len(f_in, 3, pad, 2), t_out = window_len(t_in, 3, pad, 2);
    const int64_t an = t_out + 1, plane = f_out * t_out;
    // a rows then b rows of every input row, and one zero row for the padding
    std::vector<float> split(static_cast<size_t>(batch * f_in * (an + t_out) + an), 0.0f);
    float* zero = split.data() + batch * f_in * (an + t_out);
    for_ranges(batch * f_in, 16, [&](int64_t first, int64_t last) {
        for (int64_t r = first; r < last; ++r) {
            float* dst = split.data() + r * (an + t_out);
            split_row(x + r * t_in, t_in, -pad, an, dst);
            split_row(x + r * t_in, t_in, 1 - pad, t_out, dst + an);
        }
    });
    for_ranges(batch * f_out, 4, [&](int64_t first, int64_t last) {
        for (int64_t r = first; r < last; ++r) {
            const int64_t bi = r / f_out, oy = r % f_out;
            const float* a_rows[3];
            const float* b_rows[3];
            for (int64_t k = 0; k < 3; ++k) {
                const int64_t iy = 2 * oy - pad + k;
                const float* base = (iy < 0 || iy >= f_in) ? nullptr : split.data() + (bi * f_in + iy) * (an + t_out);
                a_rows[k] = base ? base : zero;
                b_rows[k] = base ? base + an : zero;
            }
            stem_row_k3s2<ACT>(a_rows, b_rows, w, bias, c_out, t_out, plane, y + bi * c_out * plane + oy * t_out);
        }
    });
}

// Any k, stride, pad: the direct sum (a fallback; the DyMN stems are k = 3, stride 2).
template <int ACT>
static void stem_row_any(const float* x, int64_t f_in, int64_t t_in, int64_t oy, int64_t k, int64_t stride,
                         int64_t pad, const float* w, const float* bias, int64_t c_out, int64_t t_out, float* y) {
    const int64_t plane = t_out * window_len(f_in, k, pad, stride);
    for (int64_t c = 0; c < c_out; ++c) {
        float* out = y + c * plane + oy * t_out;
        for (int64_t t = 0; t < t_out; ++t) {
            float acc = bias[c];
            for (int64_t ky = 0; ky < k; ++ky) {
                const int64_t iy = oy * stride - pad + ky;
                if (iy < 0 || iy >= f_in)
                    continue;
                for (int64_t kx = 0; kx < k; ++kx) {
                    const int64_t ix = t * stride - pad + kx;
                    if (ix >= 0 && ix < t_in)
                        acc += w[(c * k + ky) * k + kx] * x[iy * t_in + ix];
                }
            }
            out[t] = act_fn<ACT>(acc);
        }
    }
}

template <int ACT>
static void stem_run(const float* x, const float* w, const float* bias, float* y, int64_t batch, int64_t f_in,
                     int64_t t_in, int64_t c_out, int64_t k, int64_t stride, int64_t pad) {
    if (k == 3 && stride == 2) {
        stem_k3s2<ACT>(x, w, bias, y, batch, f_in, t_in, c_out, pad);
        return;
    }
    const int64_t f_out = window_len(f_in, k, pad, stride), t_out = window_len(t_in, k, pad, stride);
    for_ranges(batch * f_out, 4, [&](int64_t first, int64_t last) {
        for (int64_t r = first; r < last; ++r) {
            const int64_t bi = r / f_out, oy = r % f_out;
            stem_row_any<ACT>(x + bi * f_in * t_in, f_in, t_in, oy, k, stride, pad, w, bias, c_out, t_out,
                              y + bi * c_out * f_out * t_out);
        }
    });
}

static void stem_f32(ov::TensorVector& outputs, const ov::TensorVector& inputs, int64_t stride, int64_t pad,
                     int64_t act) {
    const auto& xs = inputs[0].get_shape();
    const auto& ws = inputs[1].get_shape();
    const auto& bs = inputs[2].get_shape();
    OPENVINO_ASSERT(xs.size() == 4 && xs[1] == 1 && ws.size() == 4 && ws[1] == 1 && ws[2] == ws[3] &&
                        bs.size() == 1 && bs[0] == ws[0],
                    "Stem: x ", xs, ", w ", ws, ", bias ", bs, " are not (B, 1, F, T), (C, 1, k, k), (C)");
    const int64_t k = ws[2];
    const int64_t f_out = window_len(xs[2], k, pad, stride), t_out = window_len(xs[3], k, pad, stride);
    outputs[0].set_shape(ov::Shape{xs[0], ws[0], static_cast<size_t>(f_out), static_cast<size_t>(t_out)});
    if (outputs[0].get_size() == 0)
        return;
    const float* x = inputs[0].data<const float>();
    const float* w = inputs[1].data<const float>();
    const float* b = inputs[2].data<const float>();
    float* y = outputs[0].data<float>();
    const int64_t batch = xs[0], f_in = xs[2], t_in = xs[3], c = ws[0];
    if (act == kRelu)
        stem_run<kRelu>(x, w, b, y, batch, f_in, t_in, c, k, stride, pad);
    else if (act == kHardswish)
        stem_run<kHardswish>(x, w, b, y, batch, f_in, t_in, c, k, stride, pad);
    else
        stem_run<kIdentity>(x, w, b, y, batch, f_in, t_in, c, k, stride, pad);
}

bool Stem::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    return evaluate_as_f32(outputs, inputs, [this](ov::TensorVector& out, const ov::TensorVector& in) {
        stem_f32(out, in, m_stride, m_pad, m_act);
    });
}

// ---------------------------------------------------------------------------------------
// ONNX frontend: nodes of domain "dymn.edge"

static ov::OutputVector inputs_of(const ov::frontend::NodeContext& node) {
    ov::OutputVector in;
    for (size_t i = 0; i < node.get_input_size(); ++i)
        in.push_back(node.get_input(static_cast<int>(i)));
    return in;
}

static ov::OutputVector convert_mix_banks(const ov::frontend::NodeContext& node) {
    return std::make_shared<MixBanks>(inputs_of(node))->outputs();
}

static ov::OutputVector convert_dy_exp_tail(const ov::frontend::NodeContext& node) {
    const int64_t stride = node.get_attribute<int64_t>("stride", 1);
    const int64_t pad = node.get_attribute<int64_t>("pad", 0);
    const int64_t act = node.get_attribute<int64_t>("act", 0);
    const int64_t m = node.get_attribute<int64_t>("m", 2);
    return std::make_shared<DyExpTail>(inputs_of(node), stride, pad, act, m)->outputs();
}

static ov::OutputVector convert_axis_means(const ov::frontend::NodeContext& node) {
    return std::make_shared<AxisMeans>(inputs_of(node))->outputs();
}

static ov::OutputVector convert_stem(const ov::frontend::NodeContext& node) {
    const int64_t stride = node.get_attribute<int64_t>("stride", 2);
    const int64_t pad = node.get_attribute<int64_t>("pad", 1);
    const int64_t act = node.get_attribute<int64_t>("act", 0);
    return std::make_shared<Stem>(inputs_of(node), stride, pad, act)->outputs();
}

static ov::OutputVector convert_dy_tail(const ov::frontend::NodeContext& node) {
    const int64_t stride = node.get_attribute<int64_t>("stride", 1);
    const int64_t pad = node.get_attribute<int64_t>("pad", 0);
    const int64_t act = node.get_attribute<int64_t>("act", 0);
    const int64_t m = node.get_attribute<int64_t>("m", 2);
    return std::make_shared<DyTail>(inputs_of(node), stride, pad, act, m)->outputs();
}

}  // namespace dymn

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<dymn::MixBanks>>(),
    std::make_shared<ov::OpExtension<dymn::DyTail>>(),
    std::make_shared<ov::OpExtension<dymn::AxisMeans>>(),
    std::make_shared<ov::OpExtension<dymn::DyExpTail>>(),
    std::make_shared<ov::OpExtension<dymn::Stem>>(),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("MixBanks", "dymn.edge", dymn::convert_mix_banks),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("DyTail", "dymn.edge", dymn::convert_dy_tail),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("AxisMeans", "dymn.edge", dymn::convert_axis_means),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("DyExpTail", "dymn.edge", dymn::convert_dy_exp_tail),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("Stem", "dymn.edge", dymn::convert_stem),
}));
