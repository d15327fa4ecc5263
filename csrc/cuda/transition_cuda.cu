// CUDA kernel of nncme::transition_logsum: one thread per state, the network tables read
// through the read-only cache, an online log-sum-exp over the K+1 terms (O(B) memory).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../checks.h"
#include "../transition_math.h"
#include "cuda_utils.cuh"

namespace nncme {
namespace {

template <typename scalar_t>
__global__ void transition_kernel(const int64_t* __restrict__ states,
                                  const scalar_t* __restrict__ log_q,
                                  const scalar_t* __restrict__ log_q_nbr, int64_t B, int64_t L,
                                  NetworkView<scalar_t> net, scalar_t dt,
                                  scalar_t* __restrict__ log_tq, scalar_t* __restrict__ gen,
                                  scalar_t* __restrict__ exit_rate) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t K = net.num_reactions;
  const TransitionResult<scalar_t> r =
      transition_one(states + b * L, 1, log_q[b], log_q_nbr + b * K, 1, net, dt);
  log_tq[b] = r.log_tq;
  gen[b] = r.local_gen;
  exit_rate[b] = r.exit_rate;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> transition_logsum_cuda(
    const at::Tensor& states_in, const at::Tensor& log_q_in, const at::Tensor& log_q_nbr_in,
    const at::Tensor& rxn_ptr, const at::Tensor& rxn_entries, const at::Tensor& limits,
    const at::Tensor& rates, const at::Tensor& hill_index, const at::Tensor& hill_params,
    int64_t convention, double dt) {
  check_network(rxn_ptr, rxn_entries, limits, rates, hill_index, hill_params, convention,
                states_in.device());
  check_states(states_in, limits);
  check_transition_inputs(states_in, log_q_in, log_q_nbr_in, rates, dt);
  const c10::cuda::CUDAGuard guard(states_in.device());
  const at::Tensor states = states_in.contiguous(), log_q = log_q_in.contiguous(),
                   log_q_nbr = log_q_nbr_in.contiguous();
  const NetworkArgs args(rxn_ptr, rxn_entries, limits, rates, hill_index, hill_params, convention);
  const int64_t B = states.size(0), L = states.size(1);
  at::Tensor log_tq = at::empty({B}, rates.options());
  at::Tensor gen = at::empty({B}, rates.options());
  at::Tensor exit_rate = at::empty({B}, rates.options());
  if (B == 0) return {log_tq, gen, exit_rate};
  const int threads = 128;
  AT_DISPATCH_FLOATING_TYPES(rates.scalar_type(), "transition_logsum_cuda", [&] {
    transition_kernel<scalar_t>
        <<<blocks_for(B, threads), threads, 0, current_stream()>>>(
            states.data_ptr<int64_t>(), log_q.data_ptr<scalar_t>(),
            log_q_nbr.data_ptr<scalar_t>(), B, L, args.view<scalar_t>(), scalar_t(dt),
            log_tq.data_ptr<scalar_t>(), gen.data_ptr<scalar_t>(), exit_rate.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {log_tq, gen, exit_rate};
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CUDA, m) { m.impl("transition_logsum", &transition_logsum_cuda); }

}  // namespace nncme
