// Propensity arithmetic shared by the CPU and CUDA kernels (host and device inline functions).
// The definitions follow nncme/ops/reference.py: mass action in three conventions (per reaction),
// a sparse table of factors per reaction (Hill activation or repression, complement
// f(total - x, order)), and the truncation rule (a reaction does not fire where its product
// leaves the box).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

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

// Codes of factor_params[:, 0]: Hill activation, Hill repression, complement f(total - x, order).
enum FactorKind : int64_t { kActivation = 0, kRepression = 1, kComplement = 2 };

// The network tables as raw pointers (see CompiledNetwork for their meaning).
template <typename scalar_t>
struct NetworkView {
  const int64_t* rxn_ptr;        // (K+1)
  const int64_t* entries;        // (nnz, 3): species, reactant order, change
  const int64_t* limits;         // (L)
  const scalar_t* rates;         // (K)
  const int64_t* convention;     // (K): kFalling, kBinomial or kPower per reaction
  const int64_t* factor_ptr;     // (K+1): reaction k owns factors factor_ptr[k]..[k+1]-1
  const int64_t* factor_index;   // (F): the species each factor reads
  const scalar_t* factor_params; // (F, 3): kind, K or total, n or order
  int64_t num_species;
  int64_t num_reactions;
  // The convention every reaction shares, else -1, and whether any reaction has factors: the
  // CPU kernels take bodies specialised on both (see kConv and kFactors below).
  int64_t uniform_convention;
  bool has_factors;
};

template <typename scalar_t>
NNCME_HD bool in_box(const int64_t* n, int64_t stride, const NetworkView<scalar_t>& net) {
  for (int64_t i = 0; i < net.num_species; ++i) {
    const int64_t v = n[i * stride];
    if (v < 0 || v >= net.limits[i]) return false;
  }
  return true;
}

// One factor at species count x: a Hill factor, or the complement f(total - x, order), 0 where
// total - x < 0 (networks never ask for that: they keep total >= the species' largest count).
template <typename scalar_t>
NNCME_HD scalar_t factor_value(const scalar_t* p, int64_t x, int64_t convention) {
  const auto kind = static_cast<int64_t>(p[0]);
  if (kind == kComplement) {
    const int64_t free = static_cast<int64_t>(p[1]) - x;
    return free < 0 ? scalar_t(0)
                    : mass_action_factor<scalar_t>(free, static_cast<int64_t>(p[2]), convention);
  }
  return hill_factor<scalar_t>(scalar_t(x), p[1], p[2], kind == kRepression ? scalar_t(1)
                                                                             : scalar_t(0));
}

// The net change of species sp in reaction k (0 if the reaction does not touch it).
template <typename scalar_t>
NNCME_HD int64_t change_of(int64_t k, int64_t sp, const NetworkView<scalar_t>& net) {
  for (int64_t e = net.rxn_ptr[k]; e < net.rxn_ptr[k + 1]; ++e) {
    if (net.entries[3 * e] == sp) return net.entries[3 * e + 2];
  }
  return 0;
}

// a_k at n (inflow == false) or at the neighbour n - s_k (inflow == true). n must lie in the box
// (callers check once per state). The product state is n + s_k (outflow) or n itself (inflow),
// so the truncation rule and the neighbour's own box test reduce to the reaction's entries.
// kConv, kFactors: as for reaction_out_in below.
template <typename scalar_t, int64_t kConv = -1, bool kFactors = true>
NNCME_HD scalar_t reaction_propensity(
    const int64_t* n, int64_t stride, int64_t k, const NetworkView<scalar_t>& net, bool inflow) {
  scalar_t a = net.rates[k];
  const int64_t conv = kConv >= 0 ? kConv : net.convention[k];
  for (int64_t e = net.rxn_ptr[k]; e < net.rxn_ptr[k + 1]; ++e) {
    const int64_t sp = net.entries[3 * e];
    const int64_t order = net.entries[3 * e + 1];
    const int64_t change = net.entries[3 * e + 2];
    const int64_t count = n[sp * stride] - (inflow ? change : 0);
    const int64_t other = inflow ? count : count + change;  // the state that must stay in the box
    if (other < 0 || other >= net.limits[sp]) return scalar_t(0);
    a *= mass_action_factor<scalar_t>(count, order, conv);
  }
  if constexpr (kFactors) {
    for (int64_t f = net.factor_ptr[k]; f < net.factor_ptr[k + 1]; ++f) {
      const int64_t sp = net.factor_index[f];
      const int64_t x = n[sp * stride] - (inflow ? change_of(k, sp, net) : 0);
      a *= factor_value<scalar_t>(net.factor_params + 3 * f, x, conv);
    }
  }
  return a;
}

// Both propensities of reaction k in one pass over its entries: a_out = a_k(n) (0 where n + s_k
// leaves the box) and a_in = a_k(n - s_k) (0 where the neighbour n - s_k leaves the box). Same
// arithmetic as two calls of reaction_propensity; n must lie in the box. kConv >= 0 (only where
// net.uniform_convention == kConv) fixes the convention at compile time, and kFactors = false
// (only where !net.has_factors) leaves out the factor table, so a network without factors pays
// nothing for them and one convention costs no per-reaction branch.
template <typename scalar_t, int64_t kConv = -1, bool kFactors = true>
NNCME_HD void reaction_out_in(const int64_t* n, int64_t stride, int64_t k,
                              const NetworkView<scalar_t>& net, scalar_t& a_out,
                              scalar_t& a_in) {
  scalar_t out = net.rates[k], in = net.rates[k];
  bool out_ok = true, in_ok = true;
  const int64_t conv = kConv >= 0 ? kConv : net.convention[k];
  for (int64_t e = net.rxn_ptr[k]; e < net.rxn_ptr[k + 1]; ++e) {
    const int64_t sp = net.entries[3 * e];
    const int64_t order = net.entries[3 * e + 1];
    const int64_t change = net.entries[3 * e + 2];
    const int64_t count = n[sp * stride];
    const int64_t limit = net.limits[sp];
    const int64_t after = count + change, before = count - change;
    out_ok = out_ok && after >= 0 && after < limit;
    in_ok = in_ok && before >= 0 && before < limit;
    out *= mass_action_factor<scalar_t>(count, order, conv);
    in *= mass_action_factor<scalar_t>(before, order, conv);
  }
  if constexpr (kFactors) {
    for (int64_t f = net.factor_ptr[k]; f < net.factor_ptr[k + 1]; ++f) {
      const int64_t sp = net.factor_index[f];
      const scalar_t* p = net.factor_params + 3 * f;
      const int64_t x = n[sp * stride];
      if (out_ok) out *= factor_value<scalar_t>(p, x, conv);
      if (in_ok) in *= factor_value<scalar_t>(p, x - change_of(k, sp, net), conv);
    }
  }
  a_out = out_ok ? out : scalar_t(0);
  a_in = in_ok ? in : scalar_t(0);
}

// Host side: calls fn(conv, factors) with std::integral_constant values: conv =
// net.uniform_convention where it is a convention code (else -1, the per-reaction read) and
// factors = net.has_factors, the template arguments of the specialised kernel bodies.
template <typename scalar_t, typename Fn>
inline void dispatch_network(const NetworkView<scalar_t>& net, Fn&& fn) {
  auto with_conv = [&](auto factors) {
    switch (net.uniform_convention) {
      case kFalling:
        fn(std::integral_constant<int64_t, kFalling>{}, factors);
        break;
      case kBinomial:
        fn(std::integral_constant<int64_t, kBinomial>{}, factors);
        break;
      case kPower:
        fn(std::integral_constant<int64_t, kPower>{}, factors);
        break;
      default:
        fn(std::integral_constant<int64_t, -1>{}, factors);
    }
  };
  if (net.has_factors) {
    with_conv(std::true_type{});
  } else {
    with_conv(std::false_type{});
  }
}

}  // namespace nncme
