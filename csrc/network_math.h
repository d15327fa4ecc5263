// Propensity arithmetic shared by the CPU and CUDA kernels (host and device inline functions).
// The definitions follow nncme/ops/reference.py: mass action in three conventions, one Hill
// factor, and the truncation rule (a reaction does not fire where its product leaves the box).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NNCME_HD __host__ __device__ __forceinline__
#else
#define NNCME_HD inline
#endif

namespace nncme {

enum Convention : int64_t { kFalling = 0, kBinomial = 1, kPower = 2 };

// f(n, r): n(n-1)..(n-r+1), C(n, r) or n^r, multiplied in the reference's order.
template <typename scalar_t>
NNCME_HD scalar_t mass_action_factor(int64_t n, int64_t order, int64_t convention) {
  scalar_t f = scalar_t(1);
  for (int64_t j = 0; j < order; ++j) {
    f *= convention == kPower ? scalar_t(n) : scalar_t(n - j);
  }
  if (convention == kBinomial) {
    for (int64_t j = 2; j <= order; ++j) f /= scalar_t(j);
  }
  return f;
}

// x^h/(K^h+x^h) or K^h/(K^h+x^h), with the ratio kept <= 1 so nothing overflows.
template <typename scalar_t>
NNCME_HD scalar_t hill_factor(scalar_t x, scalar_t half, scalar_t coef, scalar_t repress) {
  using std::pow;
  const bool small = x <= half;
  const scalar_t ratio = small ? pow(x / half, coef) : pow(half / x, coef);
  const scalar_t low = ratio / (scalar_t(1) + ratio);
  const scalar_t high = scalar_t(1) / (scalar_t(1) + ratio);
  const scalar_t act = small ? low : high;
  const scalar_t rep = small ? high : low;
  return repress > scalar_t(0.5) ? rep : act;
}

// The network tables as raw pointers (see CompiledNetwork for their meaning).
template <typename scalar_t>
struct NetworkView {
  const int64_t* rxn_ptr;      // (K+1)
  const int64_t* entries;      // (nnz, 3): species, reactant order, change
  const int64_t* limits;       // (L)
  const scalar_t* rates;       // (K)
  const int64_t* hill_index;   // (K), -1 for none
  const scalar_t* hill_params; // (K, 3): half, coefficient, repress
  int64_t convention;
  int64_t num_species;
  int64_t num_reactions;
};

template <typename scalar_t>
NNCME_HD bool in_box(const int64_t* n, int64_t stride, const NetworkView<scalar_t>& net) {
  for (int64_t i = 0; i < net.num_species; ++i) {
    const int64_t v = n[i * stride];
    if (v < 0 || v >= net.limits[i]) return false;
  }
  return true;
}

// a_k at n (inflow == false) or at the neighbour n - s_k (inflow == true). n must lie in the box
// (callers check once per state). The product state is n + s_k (outflow) or n itself (inflow),
// so the truncation rule and the neighbour's own box test reduce to the reaction's entries.
template <typename scalar_t>
NNCME_HD scalar_t reaction_propensity(
    const int64_t* n, int64_t stride, int64_t k, const NetworkView<scalar_t>& net, bool inflow) {
  scalar_t a = net.rates[k];
  const int64_t reg = net.hill_index[k];
  int64_t reg_shift = 0;
  for (int64_t e = net.rxn_ptr[k]; e < net.rxn_ptr[k + 1]; ++e) {
    const int64_t sp = net.entries[3 * e];
    const int64_t order = net.entries[3 * e + 1];
    const int64_t change = net.entries[3 * e + 2];
    const int64_t count = n[sp * stride] - (inflow ? change : 0);
    const int64_t other = inflow ? count : count + change;  // the state that must stay in the box
    if (other < 0 || other >= net.limits[sp]) return scalar_t(0);
    a *= mass_action_factor<scalar_t>(count, order, net.convention);
    if (sp == reg) reg_shift = change;
  }
  if (reg >= 0) {
    const scalar_t x = scalar_t(n[reg * stride] - (inflow ? reg_shift : 0));
    const scalar_t* h = net.hill_params + 3 * k;
    a *= hill_factor<scalar_t>(x, h[0], h[1], h[2]);
  }
  return a;
}

// Both propensities of reaction k in one pass over its entries: a_out = a_k(n) (0 where n + s_k
// leaves the box) and a_in = a_k(n - s_k) (0 where the neighbour n - s_k leaves the box). Same
// arithmetic as two calls of reaction_propensity; n must lie in the box.
template <typename scalar_t>
NNCME_HD void reaction_out_in(const int64_t* n, int64_t stride, int64_t k,
                              const NetworkView<scalar_t>& net, scalar_t& a_out,
                              scalar_t& a_in) {
  scalar_t out = net.rates[k], in = net.rates[k];
  bool out_ok = true, in_ok = true;
  const int64_t reg = net.hill_index[k];
  int64_t reg_shift = 0;
  for (int64_t e = net.rxn_ptr[k]; e < net.rxn_ptr[k + 1]; ++e) {
    const int64_t sp = net.entries[3 * e];
    const int64_t order = net.entries[3 * e + 1];
    const int64_t change = net.entries[3 * e + 2];
    const int64_t count = n[sp * stride];
    const int64_t limit = net.limits[sp];
    const int64_t after = count + change, before = count - change;
    out_ok = out_ok && after >= 0 && after < limit;
    in_ok = in_ok && before >= 0 && before < limit;
    out *= mass_action_factor<scalar_t>(count, order, net.convention);
    in *= mass_action_factor<scalar_t>(before, order, net.convention);
    if (sp == reg) reg_shift = change;
  }
  if (reg >= 0) {
    const scalar_t* h = net.hill_params + 3 * k;
    const int64_t x = n[reg * stride];
    if (out_ok) out *= hill_factor<scalar_t>(scalar_t(x), h[0], h[1], h[2]);
    if (in_ok) in *= hill_factor<scalar_t>(scalar_t(x - reg_shift), h[0], h[1], h[2]);
  }
  a_out = out_ok ? out : scalar_t(0);
  a_in = in_ok ? in : scalar_t(0);
}

}  // namespace nncme
