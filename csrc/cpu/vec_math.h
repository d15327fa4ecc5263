// Branch-free elementwise math for CPU loops that the compiler vectorises. std::exp is a
// library call that blocks vectorisation; these are plain arithmetic and selects, so a loop over
// them becomes SIMD code of whatever instruction set the calling function is compiled for (the
// kernels compile their bodies once per ISA, see nade_cpu_body.inc). They are always inlined so
// the caller's ISA applies.
//
// Accuracy: exp is within 2 ulp over its whole range (Cody-Waite reduction, Taylor polynomial on
// |r| <= ln2/2 of degree 7 (float) or 13 (double)); results below the smallest subnormal are 0,
// above the largest finite value +inf, exp(-inf) = 0, NaN propagates. log: see below.
#pragma once

#include <bit>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__GNUC__)
#define NNCME_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define NNCME_ALWAYS_INLINE inline
#endif

namespace nncme::vec {

template <typename T>
struct ExpConst;

template <>
struct ExpConst<float> {
  using Int = int32_t;
  static constexpr float lo = -103.972084f, hi = 88.7228394f;  // exp(lo) < min subnormal / 2
  static constexpr float shifter = 0x1.8p23f;
  static constexpr float ln2_hi = 0x1.62e4p-1f, ln2_lo = 0x1.7f7d1cp-20f;
  static constexpr int mantissa = 23, bias = 127, degree = 7;
};

template <>
struct ExpConst<double> {
  using Int = int64_t;
  static constexpr double lo = -745.2, hi = 709.782712893384;
  static constexpr double shifter = 0x1.8p52;
  static constexpr double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
  static constexpr int mantissa = 52, bias = 1023, degree = 13;
};

// 2^n for an integer n in [-bias + 1, bias], built from its exponent bits.
template <typename T>
NNCME_ALWAYS_INLINE T pow2i(typename ExpConst<T>::Int n) {
  using C = ExpConst<T>;
  return std::bit_cast<T>(static_cast<typename C::Int>((n + C::bias)) << C::mantissa);
}

template <typename T>
NNCME_ALWAYS_INLINE T exp(T x) {
  using C = ExpConst<T>;
  using Int = typename C::Int;
  constexpr T log2e = T(1.4426950408889634);
  const T xc = x < C::lo ? C::lo : (x > C::hi ? C::hi : x);
  // round(xc * log2e) by the shifter trick; its low bits are the integer itself.
  const T shifted = xc * log2e + C::shifter;
  const T nf = shifted - C::shifter;
  const Int n = std::bit_cast<Int>(shifted) - std::bit_cast<Int>(C::shifter);
  const T r = (xc - nf * C::ln2_hi) - nf * C::ln2_lo;
  // Taylor polynomial of exp on |r| <= ln2/2, Horner form with 1/k! coefficients.
  T poly;
  if constexpr (std::is_same_v<T, float>) {
    poly = T(1.0 / 5040);
    poly = poly * r + T(1.0 / 720);
    poly = poly * r + T(1.0 / 120);
    poly = poly * r + T(1.0 / 24);
    poly = poly * r + T(1.0 / 6);
    poly = poly * r + T(0.5);
    poly = poly * r + T(1);
    poly = poly * r + T(1);
  } else {
    poly = T(1.0 / 6227020800.0);
    poly = poly * r + T(1.0 / 479001600.0);
    poly = poly * r + T(1.0 / 39916800.0);
    poly = poly * r + T(1.0 / 3628800.0);
    poly = poly * r + T(1.0 / 362880.0);
    poly = poly * r + T(1.0 / 40320.0);
    poly = poly * r + T(1.0 / 5040.0);
    poly = poly * r + T(1.0 / 720.0);
    poly = poly * r + T(1.0 / 120.0);
    poly = poly * r + T(1.0 / 24.0);
    poly = poly * r + T(1.0 / 6.0);
    poly = poly * r + T(0.5);
    poly = poly * r + T(1);
    poly = poly * r + T(1);
  }
  // Two exponent factors so that n down to the subnormal range and up to overflow stay exact.
  const Int n1 = n >> 1;
  const Int n2 = n - n1;
  T y = poly * pow2i<T>(n1) * pow2i<T>(n2);
  y = x < C::lo ? T(0) : y;
  y = x > C::hi ? std::numeric_limits<T>::infinity() : y;
  return x != x ? x : y;
}

// Natural log, within 2 ulp: x = 2^e m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s),
// s = (m - 1)/(m + 1), |s| < 0.172, by its odd series to s^9 (float) or s^19 (double).
// log(0) = -inf, log(inf) = inf, negative or NaN -> NaN; subnormals are scaled first.
template <typename T>
NNCME_ALWAYS_INLINE T log(T x) {
  using C = ExpConst<T>;
  using Int = typename C::Int;
  constexpr Int mant_mask = (Int(1) << C::mantissa) - 1;
  constexpr Int exp_mask = (Int(1) << (sizeof(T) * 8 - 1 - C::mantissa)) - 1;
  constexpr T sqrt2 = T(1.4142135623730951);
  const bool sub = x < std::numeric_limits<T>::min();
  const T xs = sub ? x * T(Int(1) << C::mantissa) : x;  // exact scaling of subnormals
  const Int bits = std::bit_cast<Int>(xs);
  Int e = ((bits >> C::mantissa) & exp_mask) - C::bias;
  e = sub ? e - C::mantissa : e;
  T m = std::bit_cast<T>((bits & mant_mask) | (Int(C::bias) << C::mantissa));  // [1, 2)
  const bool big = m > sqrt2;
  m = big ? m * T(0.5) : m;
  e = big ? e + 1 : e;
  const T s = (m - T(1)) / (m + T(1));
  const T z = s * s;
  T series;
  if constexpr (std::is_same_v<T, float>) {
    series = T(1.0 / 9);
    series = series * z + T(1.0 / 7);
    series = series * z + T(1.0 / 5);
    series = series * z + T(1.0 / 3);
  } else {
    series = T(1.0 / 19);
    series = series * z + T(1.0 / 17);
    series = series * z + T(1.0 / 15);
    series = series * z + T(1.0 / 13);
    series = series * z + T(1.0 / 11);
    series = series * z + T(1.0 / 9);
    series = series * z + T(1.0 / 7);
    series = series * z + T(1.0 / 5);
    series = series * z + T(1.0 / 3);
  }
  const T ef = T(e);
  T y = (ef * C::ln2_hi + (T(2) * s + T(2) * s * z * series)) + ef * C::ln2_lo;
  y = x == T(0) ? -std::numeric_limits<T>::infinity() : y;
  y = x == std::numeric_limits<T>::infinity() ? x : y;
  return (x < T(0) || x != x) ? std::numeric_limits<T>::quiet_NaN() : y;
}

// 1 / (1 + e^-x), and tanh(x) = 1 - 2 / (e^2x + 1); both saturate correctly at +-inf.
template <typename T>
NNCME_ALWAYS_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + exp<T>(-x));
}

template <typename T>
NNCME_ALWAYS_INLINE T tanh(T x) {
  return T(1) - T(2) / (exp<T>(x + x) + T(1));
}

}  // namespace nncme::vec
