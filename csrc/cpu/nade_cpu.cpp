// CPU kernels of nncme::nade_sample and nncme::nade_log_prob: the whole species loop in one call.
// at::parallel_for splits the batch over threads; each thread walks chunks of samples through
// all species (nade_cpu_body.inc) with their hidden states, logits and remainders in a private,
// cache-sized workspace, laid out sample-minor so that the loops vectorise across samples. Definitions: nncme/ops/reference.py (nade_sample, nade_log_prob).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "cpu/cpu_isa.h"
#include "cpu/nade_cpu.h"
#include "cpu/vec_math.h"
#include "nade_math.h"

// The kernel body, once for the baseline ISA (SSE2 on x86-64, NEON on arm64: 16-byte vectors)...
#define NNCME_ISA isa_base
#define NNCME_VBYTES 16
#include "cpu/nade_cpu_body.inc"
#undef NNCME_ISA
#undef NNCME_VBYTES

// ...and once for AVX2 with FMA (32-byte vectors), chosen at run time by cpu_isa().
#if NNCME_HAVE_AVX2_BODY
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define NNCME_ISA isa_avx2
#define NNCME_VBYTES 32
#include "cpu/nade_cpu_body.inc"
#undef NNCME_ISA
#undef NNCME_VBYTES
#pragma GCC pop_options
#endif

namespace nncme {
namespace {

template <typename T>
void run_nade_rows(const NadeArgs<T>& p, int64_t b0, int64_t b1, NadeWorkspace<T>& ws) {
#if NNCME_HAVE_AVX2_BODY
  if (cpu_isa() == CpuIsa::kAvx2) {
    if constexpr (std::is_same_v<T, float>) {
      isa_avx2::nade_rows_float(p, b0, b1, ws);
    } else {
      isa_avx2::nade_rows_double(p, b0, b1, ws);
    }
    return;
  }
#endif
  if constexpr (std::is_same_v<T, float>) {
    isa_base::nade_rows_float(p, b0, b1, ws);
  } else {
    isa_base::nade_rows_double(p, b0, b1, ws);
  }
}

// Shared by both ops: uniforms (sampling) or states (scoring) select the mode.
void nade_cpu(const NadeOperands& op, const at::Tensor& uniforms, const at::Tensor& states,
              double alpha, int64_t activation, const at::Tensor& samples,
              const at::Tensor& log_q, const at::Tensor& log_rho) {
  const int64_t B = op.B, L = op.L, M = op.M, H = op.H;
  if (B == 0) return;
  // Categories padded to whole GEMM tiles (zero weights and bias: never read back).
  const int64_t Mc = (M + kNadeCatRows - 1) / kNadeCatRows * kNadeCatRows;
  at::Tensor w = op.head_w;
  at::Tensor bias = op.head_b;
  if (Mc != M) {
    w = at::zeros({L, Mc, H}, op.head_w.options());
    w.narrow(1, 0, M).copy_(op.head_w);
    bias = at::zeros({L, Mc}, op.head_b.options());
    bias.narrow(1, 0, M).copy_(op.head_b);
  }
  const int64_t threads = at::get_num_threads();
  // Chunks small enough that every thread gets several, at most 64 samples (cache-sized).
  const int64_t rows = std::clamp<int64_t>((B + 4 * threads - 1) / (4 * threads), 1, 64);
  AT_DISPATCH_FLOATING_TYPES(op.hidden0.scalar_type(), "nade_cpu", [&] {
    NadeArgs<scalar_t> p{};
    p.uniforms = uniforms.defined() ? uniforms.data_ptr<double>() : nullptr;
    p.states = states.defined() ? states.data_ptr<int64_t>() : nullptr;
    p.hidden0 = op.hidden0.data_ptr<scalar_t>();
    p.embed = op.embed.data_ptr<scalar_t>();
    p.w = w.data_ptr<scalar_t>();
    p.bias = bias.data_ptr<scalar_t>();
    p.limits = op.limits.data_ptr<int64_t>();
    p.cons = op.cons_view();
    p.cons_start = op.cons_start.data_ptr<int64_t>();
    p.start_stride = op.start_stride;
    p.B = B;
    p.L = L;
    p.M = M;
    p.H = H;
    p.Mc = Mc;
    p.alpha = scalar_t(alpha);
    p.tempered = alpha != 1.0;
    p.activation = activation;
    p.samples = samples.defined() ? samples.data_ptr<int64_t>() : nullptr;
    p.log_q = log_q.data_ptr<scalar_t>();
    p.log_rho = log_rho.defined() ? log_rho.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, rows, [&](int64_t b0, int64_t b1) {
      NadeWorkspace<scalar_t> ws(rows, H, Mc, op.C);
      run_nade_rows<scalar_t>(p, b0, b1, ws);
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nade_sample_cpu(
    const at::Tensor& uniforms, const at::Tensor& hidden0, const at::Tensor& embed,
    const at::Tensor& head_w, const at::Tensor& head_b, const at::Tensor& limits,
    const at::Tensor& cons_weights, const at::Tensor& cons_start, const at::Tensor& cons_law_meta,
    const at::Tensor& cons_group_meta, const at::Tensor& cons_table, double alpha,
    int64_t activation) {
  const NadeOperands op(uniforms, "uniforms", hidden0, embed, head_w, head_b, limits,
                        cons_weights, cons_start, cons_law_meta, cons_group_meta, cons_table,
                        activation);
  TORCH_CHECK(uniforms.is_floating_point(), "uniforms must be a float tensor, got ",
              uniforms.scalar_type());
  check_alpha(alpha);
  // Compared in double: exactly the comparison torch makes between the CDF and the uniforms.
  const at::Tensor u = uniforms.to(at::kDouble).contiguous();
  at::Tensor samples = at::empty({op.B, op.L}, limits.options());
  at::Tensor log_q = at::empty({op.B}, hidden0.options());
  at::Tensor log_rho = at::empty({op.B}, hidden0.options());
  nade_cpu(op, u, at::Tensor(), alpha, activation, samples, log_q, log_rho);
  return {samples, log_q, log_rho};
}

at::Tensor nade_log_prob_cpu(const at::Tensor& states, const at::Tensor& hidden0,
                             const at::Tensor& embed, const at::Tensor& head_w,
                             const at::Tensor& head_b, const at::Tensor& limits,
                             const at::Tensor& cons_weights, const at::Tensor& cons_start,
                             const at::Tensor& cons_law_meta, const at::Tensor& cons_group_meta,
                             const at::Tensor& cons_table, int64_t activation) {
  const NadeOperands op(states, "states", hidden0, embed, head_w, head_b, limits, cons_weights,
                        cons_start, cons_law_meta, cons_group_meta, cons_table, activation);
  TORCH_CHECK(states.scalar_type() == at::kLong, "states must be int64, got ",
              states.scalar_type());
  at::Tensor log_q = at::empty({op.B}, hidden0.options());
  nade_cpu(op, at::Tensor(), states.contiguous(), 1.0, activation, at::Tensor(), log_q,
           at::Tensor());
  return log_q;
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CPU, m) {
  m.impl("nade_sample", &nade_sample_cpu);
  m.impl("nade_log_prob", &nade_log_prob_cpu);
}

}  // namespace nncme
