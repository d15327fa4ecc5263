// CUDA kernels of nncme::nade_sample and nncme::nade_log_prob: one launch for all species.
//
// A warp owns SPW samples at a time and walks them through every species; its running
// pre-activations, activations, masked logits and conservation remainders live in its own slice
// of shared memory (global scratch only when that slice would not fit: then one slot per
// resident warp, reused group after group), so nothing of a sample's state goes back to global
// memory between species. Per species the warp computes the logits of its samples in
// tiles of 32 * MT categories (lane l owns categories l, l + 32, ...; the species' head weights,
// transposed to (H, M), are read coalesced through the read-only cache and reused from registers
// by all SPW samples), masks counts beyond the limit and counts that break a conservation law,
// reduces max and sums with warp shuffles, and draws by an inverse CDF over warp-wide inclusive
// scans. Definitions: nncme/ops/reference.py (nade_sample, nade_log_prob).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../checks.h"
#include "../nade_math.h"
#include "cuda_utils.cuh"

namespace nncme {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dev_tanh(double x) { return tanh(x); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kFull, v, d);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    const T o = __shfl_xor_sync(kFull, v, d);
    v = o > v ? o : v;
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v, int lane) {
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const T o = __shfl_up_sync(kFull, v, d);
    if (lane >= d) v += o;
  }
  return v;
}

template <typename T>
struct NadeCudaArgs {
  const double* uniforms;  // (B, L), or nullptr when scoring given states
  const int64_t* states;   // (B, L), or nullptr when sampling
  const T* hidden0;        // (B, H)
  const T* embed;          // (L, M, H)
  const T* wt;             // (L, H, M): head_w transposed
  const T* bias;           // (L, M)
  const int64_t* limits;   // (L,)
  ConsView cons;
  const int64_t* cons_start;
  int64_t start_stride;
  int64_t B, L, M, H;
  T alpha;
  bool tempered;
  int64_t activation;
  int64_t* samples;  // (B, L) or nullptr
  T* log_q;          // (B,)
  T* log_rho;        // (B,) or nullptr
  // Per-warp workspace: byte offsets of h (SPW, H), a (SPW, H), x (SPW, M), rem (SPW, C).
  unsigned char* global_ws;  // nullptr: the workspace is in shared memory
  int64_t warp_bytes, h_off, a_off, x_off, rem_off;
};

// Samples b0 .. b0 + SPW - 1 (those below B) through every species, by one warp whose workspace
// slot starts at `base`.
template <typename T, int SPW, int MT>
__device__ __forceinline__ void nade_group(const NadeCudaArgs<T>& p, unsigned char* base,
                                           int64_t b0, int lane) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int ns = int(std::min<int64_t>(SPW, p.B - b0));  // samples present (the rest is padding)
  const int64_t H = p.H, M = p.M, L = p.L, C = p.cons.num_laws;
  T* h = reinterpret_cast<T*>(base + p.h_off);
  T* a = reinterpret_cast<T*>(base + p.a_off);
  T* x = reinterpret_cast<T*>(base + p.x_off);
  int64_t* rem = reinterpret_cast<int64_t*>(base + p.rem_off);
  const bool sampling = p.uniforms != nullptr;

#pragma unroll
  for (int s = 0; s < SPW; ++s) {
    for (int64_t k = lane; k < H; k += 32) a[s * H + k] = s < ns ? p.hidden0[(b0 + s) * H + k] : T(0);
    for (int64_t c = lane; c < C; c += 32) {
      rem[s * C + c] = s < ns ? p.cons_start[(b0 + s) * p.start_stride + c] : 0;
    }
  }
  T log_q[SPW], log_rho[SPW];
#pragma unroll
  for (int s = 0; s < SPW; ++s) log_q[s] = log_rho[s] = T(0);
  __syncwarp();

  for (int64_t i = 0; i < L; ++i) {
    for (int64_t j = lane; j < SPW * H; j += 32) {
      const T v = a[j];
      h[j] = p.activation == kSigmoid ? T(1) / (T(1) + dev_exp(-v)) : dev_tanh(v);
    }
    __syncwarp();
    const int64_t lim = std::min<int64_t>(std::max<int64_t>(p.limits[i], 0), M);  // counts >= lim are masked
    const T* w_i = p.wt + i * H * M;
    const T* bias_i = p.bias + i * M;
    T mx[SPW];
    int last[SPW];
#pragma unroll
    for (int s = 0; s < SPW; ++s) {
      mx[s] = kNegInf;
      last[s] = -1;
    }
    // Logits h . w_m + b_m of the SPW samples, masked, into x.
    for (int64_t t0 = 0; t0 < M; t0 += 32 * MT) {
      T acc[SPW][MT];
#pragma unroll
      for (int s = 0; s < SPW; ++s) {
#pragma unroll
        for (int j = 0; j < MT; ++j) acc[s][j] = T(0);
      }
#pragma unroll 4
      for (int64_t k = 0; k < H; ++k) {
        T w[MT];
#pragma unroll
        for (int j = 0; j < MT; ++j) {
          const int64_t m = t0 + lane + 32 * j;
          w[j] = m < M ? __ldg(w_i + k * M + m) : T(0);
        }
#pragma unroll
        for (int s = 0; s < SPW; ++s) {
          const T hk = h[s * H + k];
#pragma unroll
          for (int j = 0; j < MT; ++j) acc[s][j] += hk * w[j];
        }
      }
#pragma unroll
      for (int j = 0; j < MT; ++j) {
        const int64_t m = t0 + lane + 32 * j;
        if (m >= M) continue;
        const T b = __ldg(bias_i + m);
#pragma unroll
        for (int s = 0; s < SPW; ++s) {
          const bool ok = m < lim && (C == 0 || cons_allows(p.cons, rem + s * C, 1, i, m));
          const T v = ok ? acc[s][j] + b : kNegInf;
          x[s * M + m] = v;
          if (ok) {
            mx[s] = v > mx[s] ? v : mx[s];
            last[s] = int(m);
          }
        }
      }
    }
    __syncwarp();
#pragma unroll
    for (int s = 0; s < SPW; ++s) {
      const T mxs = warp_max(mx[s]);
      const int lasts = warp_max(last[s]);
      const T* xs = x + s * M;
      int64_t idx = 0;
      T lp = kNegInf, lr = kNegInf;
      if (lasts >= 0) {  // not a dead end
        // log_softmax as the reference computes it: (x - max) - log(sum exp(x - max)).
        const T amx = p.alpha * mxs;
        T sum = 0, sum_a = 0;
        for (int64_t m = lane; m < lim; m += 32) {
          const T v = xs[m];
          sum += dev_exp(v - mxs);
          if (p.tempered) sum_a += dev_exp(p.alpha * v - amx);
        }
        sum = warp_sum(sum);
        sum_a = p.tempered ? warp_sum(sum_a) : sum;
        if (sampling) {
          // Inverse CDF: the first count whose cumulative (unnormalised) proposal mass exceeds
          // u * total, by inclusive warp scans over chunks of 32 counts.
          const T threshold = s < ns ? T(p.uniforms[(b0 + s) * L + i]) * sum_a : T(0);
          T carry = 0;
          idx = lim;
          for (int64_t c0 = 0; c0 < lim; c0 += 32) {
            const int64_t m = c0 + lane;
            T e = 0;
            if (m < lim) e = p.tempered ? dev_exp(p.alpha * xs[m] - amx) : dev_exp(xs[m] - mxs);
            const T incl = warp_inclusive_scan(e, lane) + carry;
            const unsigned hit = __ballot_sync(kFull, m < lim && !(incl <= threshold));
            if (hit != 0) {
              idx = c0 + __ffs(hit) - 1;
              break;
            }
            carry = __shfl_sync(kFull, incl, 31);
          }
          idx = std::min<int64_t>(idx, lasts);  // u beyond the rounded total: the last allowed count
        } else {
          idx = s < ns ? p.states[(b0 + s) * L + i] : 0;
        }
        if (idx >= 0 && idx < lim) {
          const T v = xs[idx];
          lp = (v - mxs) - dev_log(sum);
          lr = p.tempered ? (p.alpha * v - amx) - dev_log(sum_a) : lp;
        }
      }
      log_q[s] += lp;
      log_rho[s] += lr;
      if (sampling && lane == 0 && s < ns) p.samples[(b0 + s) * L + i] = idx;
      const T* e = p.embed + (i * M + std::min<int64_t>(std::max<int64_t>(idx, 0), M - 1)) * H;
      for (int64_t k = lane; k < H; k += 32) a[s * H + k] += __ldg(e + k);
      for (int64_t c = lane; c < C; c += 32) rem[s * C + c] -= p.cons.weights[c * L + i] * idx;
    }
    __syncwarp();
  }
  if (lane == 0) {
#pragma unroll
    for (int s = 0; s < SPW; ++s) {
      if (s < ns) {
        p.log_q[b0 + s] = log_q[s];
        if (p.log_rho != nullptr) p.log_rho[b0 + s] = log_rho[s];
      }
    }
  }
}

// Each warp takes the sample groups warp, warp + warps, ... (a grid-stride loop; with the whole
// batch's warps launched, as on the shared-memory path, that is one group each) and reuses its
// own workspace slot for all of them. The loop bounds are the same for every lane of a warp, so
// a warp leaves together; no block-wide barrier follows.
template <typename T, int SPW, int MT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    nade_kernel(const NadeCudaArgs<T> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int warp_in_block = threadIdx.x >> 5;
  const int64_t warp = int64_t(blockIdx.x) * (blockDim.x >> 5) + warp_in_block;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  unsigned char* base = p.global_ws != nullptr ? p.global_ws + warp * p.warp_bytes
                                               : smem + warp_in_block * p.warp_bytes;
  for (int64_t b0 = warp * SPW; b0 < p.B; b0 += warps * SPW) {
    nade_group<T, SPW, MT>(p, base, b0, lane);
    __syncwarp();  // the next group overwrites the slot
  }
}

int multiprocessors(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }

template <typename T, int SPW, int MT>
void launch(NadeCudaArgs<T> p, const at::Tensor& like) {
  const int64_t groups = (p.B + SPW - 1) / SPW;  // warps' worth of samples
  p.h_off = 0;
  p.a_off = align16(SPW * p.H * int64_t(sizeof(T)));
  p.x_off = p.a_off + align16(SPW * p.H * int64_t(sizeof(T)));
  p.rem_off = p.x_off + align16(SPW * p.M * int64_t(sizeof(T)));
  p.warp_bytes = p.rem_off + align16(SPW * p.cons.num_laws * int64_t(sizeof(int64_t)));
  // Shared memory when a block's slices fit in the default 48 KiB: one warp per sample group.
  constexpr int64_t kSmemLimit = 48 * 1024;
  int warps_per_block = kWarpsPerBlock;
  while (warps_per_block > 1 && warps_per_block * p.warp_bytes > kSmemLimit) warps_per_block /= 2;
  at::Tensor workspace;
  int64_t smem_bytes = warps_per_block * p.warp_bytes;
  int64_t blocks = (groups + warps_per_block - 1) / warps_per_block;
  if (smem_bytes > kSmemLimit) {
    // Else a global workspace with one slot per warp that can be resident at once
    // (multiprocessors x resident blocks per multiprocessor x warps per block): the warps loop
    // over the sample groups, so the workspace does not grow with B. More warps than that would
    // only wait for a multiprocessor.
    warps_per_block = kWarpsPerBlock;
    smem_bytes = 0;
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, nade_kernel<T, SPW, MT>, warps_per_block * 32, 0));
    const int64_t resident =
        int64_t(multiprocessors(like.get_device())) * std::max<int64_t>(per_sm, 1);
    blocks = std::min((groups + warps_per_block - 1) / warps_per_block, resident);
    workspace =
        at::empty({blocks * warps_per_block * p.warp_bytes}, like.options().dtype(at::kByte));
    p.global_ws = workspace.data_ptr<uint8_t>();
  }
  nade_kernel<T, SPW, MT><<<blocks, warps_per_block * 32, smem_bytes, current_stream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int SPW>
void launch_mt(const NadeCudaArgs<T>& p, const at::Tensor& like) {
  if (p.M <= 32) {
    launch<T, SPW, 1>(p, like);
  } else if (p.M <= 64) {
    launch<T, SPW, 2>(p, like);
  } else {
    launch<T, SPW, 4>(p, like);
  }
}

void nade_cuda(const NadeOperands& op, const at::Tensor& uniforms, const at::Tensor& states,
               double alpha, int64_t activation, const at::Tensor& samples,
               const at::Tensor& log_q, const at::Tensor& log_rho) {
  if (op.B == 0) return;
  const at::Tensor wt = op.head_w.transpose(1, 2).contiguous();  // (L, H, M): coalesced rows
  // Samples per warp: reuse of each weight load across samples, as long as there are still
  // enough warps (>= 4 per multiprocessor) to hide latency.
  const int64_t min_warps = 4 * int64_t(multiprocessors(op.hidden0.get_device()));
  const int spw = (op.B + 3) / 4 >= min_warps ? 4 : ((op.B + 1) / 2 >= min_warps ? 2 : 1);
  AT_DISPATCH_FLOATING_TYPES(op.hidden0.scalar_type(), "nade_cuda", [&] {
    NadeCudaArgs<scalar_t> p{};
    p.uniforms = uniforms.defined() ? uniforms.data_ptr<double>() : nullptr;
    p.states = states.defined() ? states.data_ptr<int64_t>() : nullptr;
    p.hidden0 = op.hidden0.data_ptr<scalar_t>();
    p.embed = op.embed.data_ptr<scalar_t>();
    p.wt = wt.data_ptr<scalar_t>();
    p.bias = op.head_b.data_ptr<scalar_t>();
    p.limits = op.limits.data_ptr<int64_t>();
    p.cons = op.cons_view();
    p.cons_start = op.cons_start.data_ptr<int64_t>();
    p.start_stride = op.start_stride;
    p.B = op.B;
    p.L = op.L;
    p.M = op.M;
    p.H = op.H;
    p.alpha = scalar_t(alpha);
    p.tempered = alpha != 1.0;
    p.activation = activation;
    p.samples = samples.defined() ? samples.data_ptr<int64_t>() : nullptr;
    p.log_q = log_q.data_ptr<scalar_t>();
    p.log_rho = log_rho.defined() ? log_rho.data_ptr<scalar_t>() : nullptr;
    if (spw == 4) {
      launch_mt<scalar_t, 4>(p, log_q);
    } else if (spw == 2) {
      launch_mt<scalar_t, 2>(p, log_q);
    } else {
      launch_mt<scalar_t, 1>(p, log_q);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nade_sample_cuda(
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
  const c10::cuda::CUDAGuard guard(hidden0.device());
  const at::Tensor u = uniforms.to(at::kDouble).contiguous();
  at::Tensor samples = at::empty({op.B, op.L}, limits.options());
  at::Tensor log_q = at::empty({op.B}, hidden0.options());
  at::Tensor log_rho = at::empty({op.B}, hidden0.options());
  nade_cuda(op, u, at::Tensor(), alpha, activation, samples, log_q, log_rho);
  return {samples, log_q, log_rho};
}

at::Tensor nade_log_prob_cuda(const at::Tensor& states, const at::Tensor& hidden0,
                              const at::Tensor& embed, const at::Tensor& head_w,
                              const at::Tensor& head_b, const at::Tensor& limits,
                              const at::Tensor& cons_weights, const at::Tensor& cons_start,
                              const at::Tensor& cons_law_meta, const at::Tensor& cons_group_meta,
                              const at::Tensor& cons_table, int64_t activation) {
  const NadeOperands op(states, "states", hidden0, embed, head_w, head_b, limits, cons_weights,
                        cons_start, cons_law_meta, cons_group_meta, cons_table, activation);
  TORCH_CHECK(states.scalar_type() == at::kLong, "states must be int64, got ",
              states.scalar_type());
  const c10::cuda::CUDAGuard guard(hidden0.device());
  at::Tensor log_q = at::empty({op.B}, hidden0.options());
  nade_cuda(op, at::Tensor(), states.contiguous(), 1.0, activation, at::Tensor(), log_q,
            at::Tensor());
  return log_q;
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CUDA, m) {
  m.impl("nade_sample", &nade_sample_cuda);
  m.impl("nade_log_prob", &nade_log_prob_cuda);
}

}  // namespace nncme
