// CPU kernel of nncme::transition_logsum: per state, the exit rate, the K inflow propensities
// a_k(n - s_k) and an online (running-max) log-sum-exp, so memory is O(B) beyond the inputs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "checks.h"
#include "transition_math.h"

namespace nncme {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> transition_logsum_cpu(
    const at::Tensor& states_in, const at::Tensor& log_q_in, const at::Tensor& log_q_nbr_in,
    const at::Tensor& rxn_ptr, const at::Tensor& rxn_entries, const at::Tensor& limits,
    const at::Tensor& rates, const at::Tensor& hill_index, const at::Tensor& hill_params,
    int64_t convention, double dt) {
  check_network(rxn_ptr, rxn_entries, limits, rates, hill_index, hill_params, convention,
                states_in.device());
  check_states(states_in, limits);
  check_transition_inputs(states_in, log_q_in, log_q_nbr_in, rates, dt);
  const at::Tensor states = states_in.contiguous(), log_q = log_q_in.contiguous(),
                   log_q_nbr = log_q_nbr_in.contiguous();
  const NetworkArgs args(rxn_ptr, rxn_entries, limits, rates, hill_index, hill_params, convention);
  const int64_t B = states.size(0), L = states.size(1), K = rates.size(0);
  at::Tensor log_tq = at::empty({B}, rates.options());
  at::Tensor local_gen = at::empty({B}, rates.options());
  at::Tensor exit_rate = at::empty({B}, rates.options());
  AT_DISPATCH_FLOATING_TYPES(rates.scalar_type(), "transition_logsum_cpu", [&] {
    const auto net = args.view<scalar_t>();
    const int64_t* n_all = states.data_ptr<int64_t>();
    const scalar_t* lq = log_q.data_ptr<scalar_t>();
    const scalar_t* lqn = log_q_nbr.data_ptr<scalar_t>();
    scalar_t* out_tq = log_tq.data_ptr<scalar_t>();
    scalar_t* out_gen = local_gen.data_ptr<scalar_t>();
    scalar_t* out_exit = exit_rate.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / (8 * K + L + 1));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const TransitionResult<scalar_t> r =
            transition_one(n_all + b * L, 1, lq[b], lqn + b * K, 1, net, scalar_t(dt));
        out_tq[b] = r.log_tq;
        out_gen[b] = r.local_gen;
        out_exit[b] = r.exit_rate;
      }
    });
  });
  return {log_tq, local_gen, exit_rate};
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CPU, m) { m.impl("transition_logsum", &transition_logsum_cpu); }

}  // namespace nncme
