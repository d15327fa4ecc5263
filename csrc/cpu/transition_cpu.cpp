// CPU kernel of nncme::transition_logsum: per state, one pass over the reactions gives the exit
// rate and the K inflow propensities a_k(n - s_k); one SIMD pass gives sum_k a_k q(n - s_k)/q(n)
// (one exp per reaction), from which log T q(n) follows in closed form (transition_fast). Rows
// with infinite or NaN inputs take the log-space path (transition_one). Memory is O(B) beyond
// the inputs, plus K values per thread. Parallel over states with at::parallel_for (OpenMP).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/cpu_isa.h"
#include "cpu/vec_math.h"
#include "transition_math.h"

namespace nncme {

template <typename T>
struct TransitionArgs {
  NetworkView<T> net;
  const int64_t* states;  // (B, L)
  const T* log_q;         // (B,)
  const T* log_q_nbr;     // (B, K)
  T dt;
  T* log_tq;     // (B,)
  T* gen;        // (B,)
  T* exit_rate;  // (B,)
};

}  // namespace nncme

#define NNCME_ISA isa_base
#include "cpu/transition_cpu_body.inc"
#undef NNCME_ISA

#if NNCME_HAVE_AVX2_BODY
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define NNCME_ISA isa_avx2
#include "cpu/transition_cpu_body.inc"
#undef NNCME_ISA
#pragma GCC pop_options
#endif

namespace nncme {
namespace {

template <typename T>
void run_transition_rows(const TransitionArgs<T>& p, int64_t b0, int64_t b1, T* a_in) {
#if NNCME_HAVE_AVX2_BODY
  if (cpu_isa() == CpuIsa::kAvx2) {
    if constexpr (std::is_same_v<T, float>) {
      isa_avx2::transition_rows_float(p, b0, b1, a_in);
    } else {
      isa_avx2::transition_rows_double(p, b0, b1, a_in);
    }
    return;
  }
#endif
  if constexpr (std::is_same_v<T, float>) {
    isa_base::transition_rows_float(p, b0, b1, a_in);
  } else {
    isa_base::transition_rows_double(p, b0, b1, a_in);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> transition_logsum_cpu(
    const at::Tensor& states_in, const at::Tensor& log_q_in, const at::Tensor& log_q_nbr_in,
    const at::Tensor& rxn_ptr, const at::Tensor& rxn_entries, const at::Tensor& limits,
    const at::Tensor& rates, const at::Tensor& convention, const at::Tensor& factor_ptr,
    const at::Tensor& factor_index, const at::Tensor& factor_params, double dt) {
  const int64_t uniform = check_network(states_in, rxn_ptr, rxn_entries, limits, rates,
                                        convention, factor_ptr, factor_index, factor_params);
  check_states(states_in, limits);
  check_transition_inputs(states_in, log_q_in, log_q_nbr_in, rates, dt);
  const at::Tensor states = states_in.contiguous(), log_q = log_q_in.contiguous(),
                   log_q_nbr = log_q_nbr_in.contiguous();
  const NetworkArgs args(rxn_ptr, rxn_entries, limits, rates, convention, factor_ptr,
                         factor_index, factor_params, uniform);
  const int64_t B = states.size(0), L = states.size(1), K = rates.size(0);
  at::Tensor log_tq = at::empty({B}, rates.options());
  at::Tensor local_gen = at::empty({B}, rates.options());
  at::Tensor exit_rate = at::empty({B}, rates.options());
  AT_DISPATCH_FLOATING_TYPES(rates.scalar_type(), "transition_logsum_cpu", [&] {
    TransitionArgs<scalar_t> p{args.view<scalar_t>(),
                               states.data_ptr<int64_t>(),
                               log_q.data_ptr<scalar_t>(),
                               log_q_nbr.data_ptr<scalar_t>(),
                               scalar_t(dt),
                               log_tq.data_ptr<scalar_t>(),
                               local_gen.data_ptr<scalar_t>(),
                               exit_rate.data_ptr<scalar_t>()};
    const int64_t nnz = rxn_entries.size(0);
    const int64_t grain = std::max<int64_t>(1, 16384 / (8 * K + 4 * nnz + L + 1));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> a_in(std::max<int64_t>(K, 1));
      run_transition_rows<scalar_t>(p, begin, end, a_in.data());
    });
  });
  return {log_tq, local_gen, exit_rate};
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CPU, m) { m.impl("transition_logsum", &transition_logsum_cpu); }

}  // namespace nncme
