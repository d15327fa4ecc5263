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

// The usual case in one step and one exp per reaction: with the inflow terms scaled by q(n),
//   log T q(n) = log q(n) + log(1 - dt a_0(n) + dt sum_k a_k(n - s_k) q(n - s_k) / q(n)),
// where gen_in = sum over live k of a_k(n - s_k) exp(log q(n - s_k) - log q(n)) is the inflow half
// of the local generator, computed anyway. Equal to the log-sum-exp of transition_one whenever
// log q(n) and gen_in are finite and the bracket is not tiny (then no underflowed inflow term
// could matter); returns false otherwise, and the caller falls back to transition_one.
// a * b rounded to scalar_t, never fused into an FMA with a later add: 1 - dt a_0 must round
// dt a_0 first, as the reference's log1p(-dt a_0) does, or rows with dt a_0 within an ulp of 1
// would differ (stay term ~1e-8 instead of -inf).
template <typename scalar_t>
NNCME_HD scalar_t mul_rounded(scalar_t a, scalar_t b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(scalar_t) == 4) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  volatile scalar_t product = a * b;
  return product;
#endif
}

template <typename scalar_t>
NNCME_HD bool transition_fast(scalar_t log_q, scalar_t exit_rate, scalar_t gen_in, scalar_t dt,
                              scalar_t& log_tq) {
  using std::isfinite;
  using std::log;
  constexpr scalar_t tiny = sizeof(scalar_t) == 4 ? scalar_t(1e-10) : scalar_t(1e-200);
  const scalar_t stay = scalar_t(1) - mul_rounded(dt, exit_rate);
  const scalar_t bracket = stay + dt * gen_in;
  if (!(isfinite(log_q) && isfinite(gen_in) && stay >= scalar_t(0) && bracket >= tiny &&
        isfinite(bracket))) {
    return false;
  }
  log_tq = log_q + log(bracket);
  return true;
}

}  // namespace nncme
