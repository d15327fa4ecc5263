// CUDA kernel of nncme::transition_logsum: a group of TPS threads (8, 16 or 32 lanes of a warp)
// per state. The lanes split the state's reactions, so its row of log q(n - s_k) is read
// coalesced and a state with thousands of reactions is spread over a whole warp; each lane forms
// both propensities of its reactions in one pass (reaction_out_in) and one exp per reaction; the
// exit rate and the inflow sum are reduced with shuffles and log T q(n) follows in closed form
// (transition_fast). Rows with infinite or NaN inputs take the log-space path (transition_one)
// on the group's first lane. O(B) memory beyond the inputs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../transition_math.h"
#include "cuda_utils.cuh"

namespace nncme {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 128;

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

// Sum over the TPS lanes of a group (xor offsets below TPS stay inside the group).
template <int TPS, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int d = TPS / 2; d > 0; d >>= 1) v += __shfl_xor_sync(kFull, v, d, TPS);
  return v;
}

template <int TPS>
__device__ __forceinline__ bool group_all(bool v) {
  int x = v ? 1 : 0;
#pragma unroll
  for (int d = TPS / 2; d > 0; d >>= 1) x &= __shfl_xor_sync(kFull, x, d, TPS);
  return x != 0;
}

template <typename T, int TPS>
__global__ void __launch_bounds__(kThreads)
    transition_kernel(const int64_t* __restrict__ states, const T* __restrict__ log_q,
                      const T* __restrict__ log_q_nbr, int64_t B, NetworkView<T> net, T dt,
                      T* __restrict__ log_tq, T* __restrict__ gen, T* __restrict__ exit_rate) {
  const int lane = threadIdx.x % TPS;
  const int64_t row = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / TPS;
  // Groups past the end compute on the last state and write nothing: every lane of the warp
  // must take part in the shuffles.
  const bool live = row < B;
  const int64_t b = live ? row : B - 1;
  const int64_t L = net.num_species, K = net.num_reactions;
  const int64_t* n = states + b * L;
  const T lq = log_q[b];
  const T* lqn = log_q_nbr + b * K;
  bool inside = true;
  for (int64_t i = lane; i < L; i += TPS) inside = inside && n[i] >= 0 && n[i] < net.limits[i];
  inside = group_all<TPS>(inside);
  // No early exit before the shuffles below: every lane of the warp must reach them.
  T exit_part = 0, gen_part = 0;
  const int64_t k_end = inside ? K : 0;  // outside the box nothing fires and nothing flows in
  for (int64_t k = lane; k < k_end; k += TPS) {
    T out, in;
    reaction_out_in(n, 1, k, net, out, in);
    exit_part += out;
    if (in > T(0)) gen_part += in * dev_exp(lqn[k] - lq);
  }
  const T exit_sum = group_sum<TPS>(exit_part);
  const T gen_in = group_sum<TPS>(gen_part);
  if (!live || lane != 0) return;
  if (!inside) {  // T q(n) = q(n)
    log_tq[b] = lq;
    gen[b] = T(0);
    exit_rate[b] = T(0);
    return;
  }
  T result;
  if (transition_fast(lq, exit_sum, gen_in, dt, result)) {
    log_tq[b] = result;
    gen[b] = gen_in - exit_sum;
    exit_rate[b] = exit_sum;
  } else {  // infinite or NaN inputs, or a vanishing bracket: the log-space form
    const TransitionResult<T> r = transition_one(n, 1, lq, lqn, 1, net, dt);
    log_tq[b] = r.log_tq;
    gen[b] = r.local_gen;
    exit_rate[b] = r.exit_rate;
  }
}

template <typename T, int TPS>
void launch(const at::Tensor& states, const at::Tensor& log_q, const at::Tensor& log_q_nbr,
            const NetworkView<T>& net, T dt, at::Tensor& log_tq, at::Tensor& gen,
            at::Tensor& exit_rate) {
  const int64_t B = states.size(0);
  const int64_t blocks = (B * TPS + kThreads - 1) / kThreads;
  transition_kernel<T, TPS><<<blocks, kThreads, 0, current_stream()>>>(
      states.data_ptr<int64_t>(), log_q.data_ptr<T>(), log_q_nbr.data_ptr<T>(), B, net, dt,
      log_tq.data_ptr<T>(), gen.data_ptr<T>(), exit_rate.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> transition_logsum_cuda(
    const at::Tensor& states_in, const at::Tensor& log_q_in, const at::Tensor& log_q_nbr_in,
    const at::Tensor& rxn_ptr, const at::Tensor& rxn_entries, const at::Tensor& limits,
    const at::Tensor& rates, const at::Tensor& convention, const at::Tensor& factor_ptr,
    const at::Tensor& factor_index, const at::Tensor& factor_params, double dt) {
  const int64_t uniform = check_network(states_in, rxn_ptr, rxn_entries, limits, rates,
                                        convention, factor_ptr, factor_index, factor_params);
  check_states(states_in, limits);
  check_transition_inputs(states_in, log_q_in, log_q_nbr_in, rates, dt);
  const c10::cuda::CUDAGuard guard(states_in.device());
  const at::Tensor states = states_in.contiguous(), log_q = log_q_in.contiguous(),
                   log_q_nbr = log_q_nbr_in.contiguous();
  const NetworkArgs args(rxn_ptr, rxn_entries, limits, rates, convention, factor_ptr,
                         factor_index, factor_params, uniform);
  const int64_t B = states.size(0), K = rates.size(0);
  at::Tensor log_tq = at::empty({B}, rates.options());
  at::Tensor gen = at::empty({B}, rates.options());
  at::Tensor exit_rate = at::empty({B}, rates.options());
  if (B == 0) return {log_tq, gen, exit_rate};
  AT_DISPATCH_FLOATING_TYPES(rates.scalar_type(), "transition_logsum_cuda", [&] {
    const auto net = args.view<scalar_t>();
    const auto step = scalar_t(dt);
    // Lanes per state: enough to cover the reactions in one or two rounds, at most a warp.
    if (K <= 8) {
      launch<scalar_t, 8>(states, log_q, log_q_nbr, net, step, log_tq, gen, exit_rate);
    } else if (K <= 16) {
      launch<scalar_t, 16>(states, log_q, log_q_nbr, net, step, log_tq, gen, exit_rate);
    } else {
      launch<scalar_t, 32>(states, log_q, log_q_nbr, net, step, log_tq, gen, exit_rate);
    }
  });
  return {log_tq, gen, exit_rate};
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CUDA, m) { m.impl("transition_logsum", &transition_logsum_cuda); }

}  // namespace nncme
