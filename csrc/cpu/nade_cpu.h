// The parameter block and per-thread workspace of the CPU NADE kernel (nade_cpu.cpp and the
// per-ISA bodies it includes from nade_cpu_body.inc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "nade_math.h"

namespace nncme {

template <typename T>
struct NadeArgs {
  const double* uniforms;  // (B, L), or nullptr when scoring given states
  const int64_t* states;   // (B, L), or nullptr when sampling
  const T* hidden0;        // (B, H)
  const T* embed;          // (L, M, H)
  const T* wt;             // (L, H, Mp): head_w transposed, columns zero-padded to Mp
  const T* bias;           // (L, Mp): head_b, zero-padded to Mp
  const int64_t* limits;   // (L,)
  ConsView cons;
  const int64_t* cons_start;  // (B, C) with start_stride C, or (C,) with start_stride 0
  int64_t start_stride;
  int64_t B, L, M, H, Mp;
  T alpha;
  bool tempered;
  int64_t activation;
  int64_t* samples;  // (B, L) or nullptr
  T* log_q;          // (B,)
  T* log_rho;        // (B,) or nullptr
};

// One thread's buffers for a chunk of `rows` samples.
template <typename T>
struct NadeWorkspace {
  int64_t rows;
  std::vector<T> a, h, logits, scratch, log_q, log_rho;
  std::vector<int64_t> rem, idx;
  NadeWorkspace(int64_t rows_, int64_t H, int64_t Mp, int64_t C)
      : rows(rows_), a(rows_ * H), h((rows_ + 5) * H), logits((rows_ + 5) * Mp), scratch(Mp),
        log_q(rows_), log_rho(rows_), rem(std::max<int64_t>(1, rows_ * C)), idx(rows_) {}
};

}  // namespace nncme
