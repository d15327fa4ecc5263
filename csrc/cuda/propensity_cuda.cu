// CUDA kernels of nncme::propensities (one thread per state and reaction) and nncme::neighbors
// (one thread per state and reaction, writing its neighbour row).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../checks.h"
#include "cuda_utils.cuh"

namespace nncme {
namespace {

template <typename scalar_t>
__global__ void propensities_kernel(const int64_t* __restrict__ states, int64_t B, int64_t L,
                                    NetworkView<scalar_t> net, scalar_t* __restrict__ out) {
  const int64_t K = net.num_reactions;
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * K) return;
  const int64_t b = idx / K, k = idx % K;
  const int64_t* n = states + b * L;
  out[idx] = in_box(n, 1, net) ? reaction_propensity(n, 1, k, net, false) : scalar_t(0);
}

__global__ void neighbors_kernel(const int64_t* __restrict__ states, int64_t B, int64_t L,
                                 int64_t K, const int64_t* __restrict__ ptr,
                                 const int64_t* __restrict__ ent,
                                 const int64_t* __restrict__ lim, int64_t* __restrict__ nbr,
                                 bool* __restrict__ valid) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * K) return;
  const int64_t b = idx / K, k = idx % K;
  const int64_t* n = states + b * L;
  int64_t* out = nbr + idx * L;
  bool ok = true;
  for (int64_t i = 0; i < L; ++i) {
    out[i] = n[i];
    ok = ok && n[i] >= 0 && n[i] < lim[i];
  }
  for (int64_t e = ptr[k]; e < ptr[k + 1] && ok; ++e) {
    const int64_t m = n[ent[3 * e]] - ent[3 * e + 2];
    ok = m >= 0 && m < lim[ent[3 * e]];
  }
  valid[idx] = ok;
  if (ok) {
    for (int64_t e = ptr[k]; e < ptr[k + 1]; ++e) out[ent[3 * e]] -= ent[3 * e + 2];
  }
}

at::Tensor propensities_cuda(const at::Tensor& states_in, const at::Tensor& rxn_ptr,
                             const at::Tensor& rxn_entries, const at::Tensor& limits,
                             const at::Tensor& rates, const at::Tensor& convention,
                             const at::Tensor& factor_ptr, const at::Tensor& factor_index,
                             const at::Tensor& factor_params) {
  const int64_t uniform = check_network(states_in, rxn_ptr, rxn_entries, limits, rates,
                                        convention, factor_ptr, factor_index, factor_params);
  check_states(states_in, limits);
  const c10::cuda::CUDAGuard guard(states_in.device());
  const at::Tensor states = states_in.contiguous();
  const NetworkArgs args(rxn_ptr, rxn_entries, limits, rates, convention, factor_ptr,
                         factor_index, factor_params, uniform);
  const int64_t B = states.size(0), L = states.size(1), K = rates.size(0);
  at::Tensor out = at::empty({B, K}, rates.options());
  if (B * K == 0) return out;
  const int threads = 256;
  AT_DISPATCH_FLOATING_TYPES(rates.scalar_type(), "propensities_cuda", [&] {
    propensities_kernel<scalar_t>
        <<<blocks_for(B * K, threads), threads, 0, current_stream()>>>(
            states.data_ptr<int64_t>(), B, L, args.view<scalar_t>(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> neighbors_cuda(const at::Tensor& states_in,
                                                  const at::Tensor& rxn_ptr_in,
                                                  const at::Tensor& rxn_entries_in,
                                                  const at::Tensor& limits_in) {
  check_devices("states", states_in.device(),
                {{"rxn_ptr", rxn_ptr_in}, {"rxn_entries", rxn_entries_in}, {"limits", limits_in}});
  const c10::cuda::CUDAGuard guard(states_in.device());
  check_reaction_tables(rxn_ptr_in, rxn_entries_in, limits_in);
  check_states(states_in, limits_in);
  const at::Tensor states = states_in.contiguous(), ptr = rxn_ptr_in.contiguous(),
                   ent = rxn_entries_in.contiguous(), lim = limits_in.contiguous();
  const int64_t B = states.size(0), L = states.size(1), K = ptr.size(0) - 1;
  at::Tensor nbr = at::empty({B, K, L}, states.options());
  at::Tensor valid = at::empty({B, K}, states.options().dtype(at::kBool));
  if (B * K == 0) return {nbr, valid};
  const int threads = 256;
  neighbors_kernel<<<blocks_for(B * K, threads), threads, 0, current_stream()>>>(
      states.data_ptr<int64_t>(), B, L, K, ptr.data_ptr<int64_t>(), ent.data_ptr<int64_t>(),
      lim.data_ptr<int64_t>(), nbr.data_ptr<int64_t>(), valid.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {nbr, valid};
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CUDA, m) {
  m.impl("propensities", &propensities_cuda);
  m.impl("neighbors", &neighbors_cuda);
}

}  // namespace nncme
