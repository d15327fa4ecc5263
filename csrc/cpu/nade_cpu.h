// The parameter block and per-thread workspace of the CPU NADE kernel (nade_cpu.cpp and the
// per-ISA bodies it includes from nade_cpu_body.inc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "nade_math.h"

namespace nncme {

constexpr int kNadeCatRows = 6;  // categories per head-GEMM tile (rows of w and of the logits)

// Samples per SIMD block of the transposed chunk state: two 32-byte registers.
template <typename T>
constexpr int64_t kNadeSampleBlock = 64 / sizeof(T);

template <typename T>
struct NadeArgs {
  const double* uniforms;  // (B, L), or nullptr when scoring given states
  const int64_t* states;   // (B, L), or nullptr when sampling
  const T* hidden0;        // (B, H)
  const T* embed;          // (L, M, H)
  const T* w;              // (L, Mc, H): head_w with zero rows up to Mc
  const T* bias;           // (L, Mc): head_b, zero-padded
  const int64_t* limits;   // (L,)
  ConsView cons;
  const int64_t* cons_start;  // (B, C) with start_stride C, or (C,) with start_stride 0
  int64_t start_stride;
  int64_t B, L, M, H, Mc;  // Mc: M rounded up to a multiple of kNadeCatRows
  T alpha;
  bool tempered;
  int64_t activation;
  int64_t* samples;  // (B, L) or nullptr
  T* log_q;          // (B,)
  T* log_rho;        // (B,) or nullptr
};

// One thread's buffers for a chunk of up to `rows` samples, stored transposed (sample minor,
// Sp = rows rounded up to kNadeSampleBlock columns).
template <typename T>
struct NadeWorkspace {
  int64_t rows, Sp;
  std::vector<T> a, h;                // (H, Sp) pre-activations and activations
  std::vector<T> logits, scratch;     // (Mc, Sp) logits and exp terms
  std::vector<T> mx, sum, log_sum, sum_a, log_sum_a, acc, found, threshold;  // (Sp,)
  std::vector<T> log_q, log_rho;      // (rows,)
  std::vector<int64_t> last, idx;     // (Sp,)
  std::vector<int64_t> rem;           // (rows, C)
  NadeWorkspace(int64_t rows_, int64_t H, int64_t Mc, int64_t C)
      : rows(rows_),
        Sp((rows_ + kNadeSampleBlock<T> - 1) / kNadeSampleBlock<T> * kNadeSampleBlock<T>),
        a(H * Sp), h(H * Sp), logits(Mc * Sp), scratch(Mc * Sp), mx(Sp), sum(Sp), log_sum(Sp),
        sum_a(Sp), log_sum_a(Sp), acc(Sp), found(Sp), threshold(Sp), log_q(rows_),
        log_rho(rows_), last(Sp), idx(Sp), rem(std::max<int64_t>(1, rows_ * C)) {}
};

}  // namespace nncme
