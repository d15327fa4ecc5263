// NADE sampling arithmetic shared by the CPU and CUDA kernels of nncme::nade_sample and
// nncme::nade_log_prob: the conservation-law mask and the activations. The definitions follow
// nncme/ops/reference.py (_nade_loop) and nncme/ops/masks.py (allowed_counts, _feasible).
#pragma once

#include <cmath>
#include <cstdint>

#include "network_math.h"  // NNCME_HD

namespace nncme {

enum Activation : int64_t { kSigmoid = 0, kTanh = 1 };

// The feasibility tables of nncme.conservation.FeasibilityTables as raw pointers.
struct ConsView {
  const int64_t* weights;     // (C, L) law weights
  const int64_t* law_meta;    // (C, 4) rows (group, stride, lo, extent)
  const int64_t* group_meta;  // (G, 2) rows (base, size)
  const bool* table;          // (T,)
  int64_t num_laws, num_groups, table_size, num_species;
};

// Whether count m of species i keeps every conservation law satisfiable, given the remainders
// rem[c * rem_stride] of each law before species i: the remainders after choosing m must lie in
// every law's range and be reachable by the species after i (the group tables at row i + 1).
NNCME_HD bool cons_allows(const ConsView& cv, const int64_t* rem, int64_t rem_stride, int64_t i,
                          int64_t m) {
  const int64_t C = cv.num_laws;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t off = rem[c * rem_stride] - cv.weights[c * cv.num_species + i] * m -
                        cv.law_meta[4 * c + 2];
    if (off < 0 || off >= cv.law_meta[4 * c + 3]) return false;
  }
  if (cv.table_size <= 0) return false;
  for (int64_t g = 0; g < cv.num_groups; ++g) {
    int64_t idx = cv.group_meta[2 * g] + (i + 1) * cv.group_meta[2 * g + 1];
    for (int64_t c = 0; c < C; ++c) {
      if (cv.law_meta[4 * c] != g) continue;
      const int64_t off = rem[c * rem_stride] - cv.weights[c * cv.num_species + i] * m -
                          cv.law_meta[4 * c + 2];
      idx += off * cv.law_meta[4 * c + 1];
    }
    // The reference clamps too: a malformed table must not be read out of bounds.
    idx = idx < 0 ? 0 : (idx >= cv.table_size ? cv.table_size - 1 : idx);
    if (!cv.table[idx]) return false;
  }
  return true;
}

}  // namespace nncme
