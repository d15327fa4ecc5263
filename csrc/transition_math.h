// One state's transition log-sum, shared by the CPU and CUDA kernels of transition_logsum.
#pragma once

#include <cmath>
#include <limits>

#include "network_math.h"

namespace nncme {

template <typename scalar_t>
struct TransitionResult {
  scalar_t log_tq, local_gen, exit_rate;
};

// Running-max log-sum-exp: one pass, no stored terms. NaN in any term makes the result NaN.
template <typename scalar_t>
struct OnlineLogSumExp {
  scalar_t max = -std::numeric_limits<scalar_t>::infinity();
  scalar_t sum = 0;
  bool nan = false;
  NNCME_HD void add(scalar_t x) {
    using std::exp;
    if (x != x) {
      nan = true;
    } else if (x > max) {
      sum = sum * exp(max - x) + scalar_t(1);  // exp(-inf) = 0 on the first finite term
      max = x;
    } else if (x > -std::numeric_limits<scalar_t>::infinity()) {
      sum += exp(x - max);
    }
  }
  NNCME_HD scalar_t result() const {
    using std::log;
    if (nan) return std::numeric_limits<scalar_t>::quiet_NaN();
    if (sum == scalar_t(0)) return -std::numeric_limits<scalar_t>::infinity();
    return max + log(sum);
  }
};

// log[q(n)(1 - dt a_0(n)) + dt sum_k a_k(n - s_k) q(n - s_k)], (W q)(n)/q(n) and a_0(n).
// Mirrors reference.transition_logsum term for term; n must be readable for all L species.
template <typename scalar_t>
NNCME_HD TransitionResult<scalar_t> transition_one(const int64_t* n, int64_t n_stride,
                                                   scalar_t log_q, const scalar_t* log_q_nbr,
                                                   int64_t nbr_stride,
                                                   const NetworkView<scalar_t>& net, scalar_t dt) {
  using std::exp;
  using std::log;
  using std::log1p;
  const int64_t K = net.num_reactions;
  if (!in_box(n, n_stride, net)) return {log_q, scalar_t(0), scalar_t(0)};  // nothing fires
  scalar_t exit_rate = 0;
  for (int64_t k = 0; k < K; ++k) exit_rate += reaction_propensity(n, n_stride, k, net, false);
  OnlineLogSumExp<scalar_t> lse;
  lse.add(log_q + log1p(-dt * exit_rate));
  scalar_t gen = 0;
  const scalar_t log_dt = log(dt);
  for (int64_t k = 0; k < K; ++k) {
    const scalar_t a_in = reaction_propensity(n, n_stride, k, net, true);
    if (!(a_in > scalar_t(0))) continue;
    const scalar_t lqn = log_q_nbr[k * nbr_stride];
    gen += a_in * exp(lqn - log_q);
    lse.add(log_dt + log(a_in) + lqn);
  }
  return {lse.result(), gen - exit_rate, exit_rate};
}

}  // namespace nncme
