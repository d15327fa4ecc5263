// Argument checks shared by the CPU and CUDA entry points: a caller's mistake becomes a message
// that names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "device_checks.h"
#include "network_math.h"

namespace nncme {

// A CSR pointer table of K reactions over `rows` rows: from 0, non-decreasing, to rows.
inline void check_pointer_table(const char* name, const int64_t* ptr, int64_t K, int64_t rows,
                                const char* rows_name, const char* count_name) {
  TORCH_CHECK(ptr[0] == 0, name, " must start at 0, got ", name, "[0] = ", ptr[0]);
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK(ptr[k + 1] >= ptr[k], name, " must be non-decreasing (reaction k owns ", rows_name,
                " rows ", name, "[k] to ", name, "[k+1] - 1), got ", name, "[", k, "] = ", ptr[k],
                " > ", name, "[", k + 1, "] = ", ptr[k + 1]);
  }
  TORCH_CHECK(ptr[K] == rows, name, " must end at ", count_name, " = ", rows_name, ".size(0) = ",
              rows, ", got ", name, "[", K, "] = ", ptr[K]);
}

// Factor kinds, and integer totals and orders of complement factors (read on the host).
inline void check_factor_params(const at::Tensor& factor_params) {
  const at::Tensor host = factor_params.to(at::kCPU, at::kDouble).contiguous();
  const double* p = host.data_ptr<double>();
  for (int64_t f = 0; f < host.size(0); ++f) {
    const double kind = p[3 * f], a = p[3 * f + 1], b = p[3 * f + 2];
    TORCH_CHECK(kind == kActivation || kind == kRepression || kind == kComplement,
                "factor_params[", f, ", 0] (the factor kind) must be 0 (Hill activation), 1 (Hill "
                "repression) or 2 (complement), got ", kind);
    if (kind == kComplement) {
      TORCH_CHECK(a >= 0 && a == std::floor(a) && b >= 0 && b == std::floor(b),
                  "factor_params[", f, "] of a complement factor must hold an integer total >= 0 "
                  "and an integer order >= 0, got total ", a, ", order ", b);
    }
  }
}

// The reaction tables of a network, the one place they are validated (every op that takes them
// calls this): rxn_ptr (K+1,), rxn_entries (nnz, 3) and limits (L,) int64, and, where given
// (undefined: the op does not read them), the per-reaction convention (K,) int64 and the factor
// table factor_ptr (K+1,), factor_index (F,) int64 and factor_params (F, 3) float. Beyond shapes
// and dtypes, the contents are checked so that no table can send a kernel out of bounds or into
// an undefined branch: both pointer tables start at 0, never decrease and end at their table's
// length; species indices are in [0, L); reactant orders are >= 0; conventions are 0, 1 or 2;
// factor kinds are 0, 1 or 2, and a complement's total and order are integers >= 0. The tables
// are tiny, so they are read on the host once per op call; for CUDA tensors that costs one small
// device-to-host copy (two with factors) and a stream sync, the price of kernels that trust
// their tables.
//
// Returns the convention every reaction shares (the kernels take bodies specialised on it), else
// -1; also -1 without the convention table.
inline int64_t check_reaction_tables(const at::Tensor& rxn_ptr, const at::Tensor& rxn_entries,
                                     const at::Tensor& limits, const at::Tensor& convention = {},
                                     const at::Tensor& factor_ptr = {},
                                     const at::Tensor& factor_index = {},
                                     const at::Tensor& factor_params = {}) {
  TORCH_CHECK(rxn_ptr.dim() == 1 && rxn_ptr.size(0) >= 1 && rxn_ptr.scalar_type() == at::kLong,
              "rxn_ptr must be int64 of shape (K+1,), got ", rxn_ptr.scalar_type(), " ",
              rxn_ptr.sizes());
  TORCH_CHECK(rxn_entries.dim() == 2 && rxn_entries.size(1) == 3 &&
                  rxn_entries.scalar_type() == at::kLong,
              "rxn_entries must be int64 of shape (nnz, 3), got ", rxn_entries.scalar_type(), " ",
              rxn_entries.sizes());
  TORCH_CHECK(limits.dim() == 1 && limits.scalar_type() == at::kLong,
              "limits must be int64 of shape (L,), got ", limits.scalar_type(), " ",
              limits.sizes());
  const int64_t K = rxn_ptr.size(0) - 1, nnz = rxn_entries.size(0), L = limits.size(0);
  std::vector<at::Tensor> parts{rxn_ptr.reshape(-1), rxn_entries.reshape(-1)};
  const bool with_factors = convention.defined();
  int64_t F = 0;
  if (with_factors) {
    TORCH_CHECK(convention.dim() == 1 && convention.size(0) == K &&
                    convention.scalar_type() == at::kLong,
                "convention must be int64 of shape (K,) = (", K, ",), got ",
                convention.scalar_type(), " ", convention.sizes());
    TORCH_CHECK(factor_ptr.dim() == 1 && factor_ptr.size(0) == K + 1 &&
                    factor_ptr.scalar_type() == at::kLong,
                "factor_ptr must be int64 of shape (K+1,) = (", K + 1, ",), got ",
                factor_ptr.scalar_type(), " ", factor_ptr.sizes());
    TORCH_CHECK(factor_index.dim() == 1 && factor_index.scalar_type() == at::kLong,
                "factor_index must be int64 of shape (F,), got ", factor_index.scalar_type(), " ",
                factor_index.sizes());
    F = factor_index.size(0);
    TORCH_CHECK(factor_params.dim() == 2 && factor_params.size(0) == F &&
                    factor_params.size(1) == 3,
                "factor_params must have shape (F, 3) = (", F, ", 3), got ",
                factor_params.sizes());
    parts.insert(parts.end(), {convention, factor_ptr, factor_index});
  }
  const at::Tensor host = at::cat(parts).to(at::kCPU).contiguous();  // one copy from a GPU
  const int64_t* ptr = host.data_ptr<int64_t>();
  const int64_t* ent = ptr + (K + 1);
  check_pointer_table("rxn_ptr", ptr, K, nnz, "rxn_entries", "nnz");
  for (int64_t e = 0; e < nnz; ++e) {
    const int64_t species = ent[3 * e], order = ent[3 * e + 1];
    TORCH_CHECK(species >= 0 && species < L, "rxn_entries[", e,
                ", 0] must be a species index in [0, L) = [0, ", L, "), got ", species);
    TORCH_CHECK(order >= 0, "rxn_entries[", e, ", 1] (a reactant order) must be >= 0, got ",
                order);
  }
  if (!with_factors) return -1;
  const int64_t* conv = ent + 3 * nnz;
  const int64_t* fptr = conv + K;
  const int64_t* findex = fptr + (K + 1);
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK(conv[k] >= kFalling && conv[k] <= kPower, "convention[", k,
                "] must be 0 (falling), 1 (binomial) or 2 (power), got ", conv[k]);
  }
  check_pointer_table("factor_ptr", fptr, K, F, "factor_index", "F");
  for (int64_t f = 0; f < F; ++f) {
    TORCH_CHECK(findex[f] >= 0 && findex[f] < L, "factor_index[", f,
                "] must be a species index in [0, L) = [0, ", L, "), got ", findex[f]);
  }
  if (F > 0) check_factor_params(factor_params);
  for (int64_t k = 1; k < K; ++k) {
    if (conv[k] != conv[0]) return -1;
  }
  return K > 0 ? conv[0] : int64_t(kFalling);
}

// The network arguments of propensities and transition_logsum, against the device of states.
// Returns check_reaction_tables' uniform convention (for NetworkArgs).
inline int64_t check_network(const at::Tensor& states, const at::Tensor& rxn_ptr,
                          const at::Tensor& rxn_entries, const at::Tensor& limits,
                          const at::Tensor& rates, const at::Tensor& convention,
                          const at::Tensor& factor_ptr, const at::Tensor& factor_index,
                          const at::Tensor& factor_params) {
  TORCH_CHECK(rates.dim() == 1 && rates.is_floating_point(),
              "rates must be a 1-D float tensor of shape (K,), got ", rates.scalar_type(), " ",
              rates.sizes());
  const auto K = rates.size(0);
  TORCH_CHECK(rxn_ptr.dim() == 1 && rxn_ptr.size(0) == K + 1,
              "rxn_ptr must have shape (K+1,) = (", K + 1, ",) for K = rates.size(0), got ",
              rxn_ptr.sizes());
  TORCH_CHECK(factor_params.scalar_type() == rates.scalar_type(),
              "factor_params must have the dtype of rates (", rates.scalar_type(), "), got ",
              factor_params.scalar_type());
  check_devices("states", states.device(),
                {{"rxn_ptr", rxn_ptr},
                 {"rxn_entries", rxn_entries},
                 {"limits", limits},
                 {"rates", rates},
                 {"convention", convention},
                 {"factor_ptr", factor_ptr},
                 {"factor_index", factor_index},
                 {"factor_params", factor_params}});
  return check_reaction_tables(rxn_ptr, rxn_entries, limits, convention, factor_ptr,
                               factor_index, factor_params);
}

inline void check_states(const at::Tensor& states, const at::Tensor& limits) {
  TORCH_CHECK(states.dim() == 2 && states.scalar_type() == at::kLong,
              "states must be int64 of shape (B, L), got ", states.scalar_type(), " ",
              states.sizes());
  TORCH_CHECK(states.size(1) == limits.size(0), "states have ", states.size(1),
              " species but the network has ", limits.size(0));
}

// Contiguous copies of the network tables, and the raw view kernels read.
struct NetworkArgs {
  at::Tensor rxn_ptr, entries, limits, rates, convention, factor_ptr, factor_index,
      factor_params;
  int64_t uniform_convention;  // from check_network
  NetworkArgs(const at::Tensor& p, const at::Tensor& e, const at::Tensor& l, const at::Tensor& r,
              const at::Tensor& conv, const at::Tensor& fp, const at::Tensor& fi,
              const at::Tensor& fpar, int64_t uniform)
      : rxn_ptr(p.contiguous()), entries(e.contiguous()), limits(l.contiguous()),
        rates(r.contiguous()), convention(conv.contiguous()), factor_ptr(fp.contiguous()),
        factor_index(fi.contiguous()), factor_params(fpar.contiguous()),
        uniform_convention(uniform) {}
  template <typename scalar_t>
  NetworkView<scalar_t> view() const {
    return NetworkView<scalar_t>{rxn_ptr.data_ptr<int64_t>(),
                                 entries.data_ptr<int64_t>(),
                                 limits.data_ptr<int64_t>(),
                                 rates.data_ptr<scalar_t>(),
                                 convention.data_ptr<int64_t>(),
                                 factor_ptr.data_ptr<int64_t>(),
                                 factor_index.data_ptr<int64_t>(),
                                 factor_params.data_ptr<scalar_t>(),
                                 limits.size(0),
                                 rates.size(0),
                                 uniform_convention,
                                 factor_index.size(0) > 0};
  }
};

}  // namespace nncme

namespace nncme {

inline void check_transition_inputs(const at::Tensor& states, const at::Tensor& log_q,
                                    const at::Tensor& log_q_nbr, const at::Tensor& rates,
                                    double dt) {
  const auto B = states.size(0), K = rates.size(0);
  TORCH_CHECK(log_q.dim() == 1 && log_q.size(0) == B, "log_q must have shape (B,) = (", B,
              ",), got ", log_q.sizes());
  TORCH_CHECK(log_q_nbr.dim() == 2 && log_q_nbr.size(0) == B && log_q_nbr.size(1) == K,
              "log_q_nbr must have shape (B, K) = (", B, ", ", K, "), got ", log_q_nbr.sizes());
  TORCH_CHECK(log_q.scalar_type() == rates.scalar_type() &&
                  log_q_nbr.scalar_type() == rates.scalar_type(),
              "log_q and log_q_nbr must have the dtype of rates (", rates.scalar_type(), ")");
  check_devices("states", states.device(), {{"log_q", log_q}, {"log_q_nbr", log_q_nbr}});
  TORCH_CHECK(dt > 0 && std::isfinite(dt), "dt must be finite and > 0, got ", dt);
}

}  // namespace nncme

#include "nade_math.h"

namespace nncme {

// The NADE operands of nade_sample / nade_log_prob, checked and made contiguous. `rows` is the
// (B, L) uniforms or states tensor.
struct NadeOperands {
  at::Tensor hidden0, embed, head_w, head_b, limits;
  at::Tensor cons_weights, cons_start, cons_law_meta, cons_group_meta, cons_table;
  int64_t B, L, M, H, C, start_stride;

  NadeOperands(const at::Tensor& rows, const char* rows_name, const at::Tensor& hidden0_,
               const at::Tensor& embed_, const at::Tensor& head_w_, const at::Tensor& head_b_,
               const at::Tensor& limits_, const at::Tensor& cw, const at::Tensor& cs,
               const at::Tensor& clm, const at::Tensor& cgm, const at::Tensor& ct,
               int64_t activation) {
    TORCH_CHECK(hidden0_.dim() == 2 && (hidden0_.scalar_type() == at::kFloat ||
                                        hidden0_.scalar_type() == at::kDouble),
                "hidden0 must be float32 or float64 of shape (B, H), got ",
                hidden0_.scalar_type(), " ", hidden0_.sizes());
    B = hidden0_.size(0);
    H = hidden0_.size(1);
    TORCH_CHECK(embed_.dim() == 3 && embed_.size(2) == H,
                "embed must have shape (L, M, H) with H = hidden0.size(1) = ", H, ", got ",
                embed_.sizes());
    L = embed_.size(0);
    M = embed_.size(1);
    TORCH_CHECK(M >= 1, "embed must have at least one category (M >= 1), got M = ", M);
    TORCH_CHECK(head_w_.sizes() == embed_.sizes(), "head_w must have the shape of embed (L, M, H) = ",
                embed_.sizes(), ", got ", head_w_.sizes());
    TORCH_CHECK(head_b_.dim() == 2 && head_b_.size(0) == L && head_b_.size(1) == M,
                "head_b must have shape (L, M) = (", L, ", ", M, "), got ", head_b_.sizes());
    for (const at::Tensor* t : {&embed_, &head_w_, &head_b_}) {
      TORCH_CHECK(t->scalar_type() == hidden0_.scalar_type(),
                  "embed, head_w and head_b must have the dtype of hidden0 (",
                  hidden0_.scalar_type(), "), got ", t->scalar_type());
    }
    TORCH_CHECK(rows.dim() == 2 && rows.size(0) == B && rows.size(1) == L, rows_name,
                " must have shape (B, L) = (", B, ", ", L, "), got ", rows.sizes());
    TORCH_CHECK(limits_.dim() == 1 && limits_.size(0) == L && limits_.scalar_type() == at::kLong,
                "limits must be int64 of shape (L,) = (", L, ",), got ", limits_.scalar_type(),
                " ", limits_.sizes());
    TORCH_CHECK(cw.dim() == 2 && cw.size(1) == L && cw.scalar_type() == at::kLong,
                "cons_weights must be int64 of shape (C, L) with L = ", L, ", got ", cw.sizes());
    C = cw.size(0);
    TORCH_CHECK(clm.dim() == 2 && clm.size(0) == C && clm.size(1) == 4 &&
                    clm.scalar_type() == at::kLong,
                "cons_law_meta must be int64 of shape (C, 4) = (", C, ", 4), got ", clm.sizes());
    TORCH_CHECK(cgm.dim() == 2 && cgm.size(1) == 2 && cgm.scalar_type() == at::kLong,
                "cons_group_meta must be int64 of shape (G, 2), got ", cgm.sizes());
    TORCH_CHECK(ct.dim() == 1 && ct.scalar_type() == at::kBool,
                "cons_table must be a 1-D bool tensor, got ", ct.scalar_type(), " ", ct.sizes());
    TORCH_CHECK(cs.scalar_type() == at::kLong &&
                    ((cs.dim() == 1 && cs.size(0) == C) ||
                     (cs.dim() == 2 && cs.size(0) == B && cs.size(1) == C)),
                "cons_start must be int64 of shape (B, C) = (", B, ", ", C, ") or (C,), got ",
                cs.sizes());
    TORCH_CHECK(activation == kSigmoid || activation == kTanh,
                "activation must be 0 (sigmoid) or 1 (tanh), got ", activation);
    check_devices("hidden0", hidden0_.device(),
                  {{rows_name, rows},
                   {"embed", embed_},
                   {"head_w", head_w_},
                   {"head_b", head_b_},
                   {"limits", limits_},
                   {"cons_weights", cw},
                   {"cons_start", cs},
                   {"cons_law_meta", clm},
                   {"cons_group_meta", cgm},
                   {"cons_table", ct}});
    hidden0 = hidden0_.contiguous();
    embed = embed_.contiguous();
    head_w = head_w_.contiguous();
    head_b = head_b_.contiguous();
    limits = limits_.contiguous();
    cons_weights = cw.contiguous();
    cons_start = cs.contiguous();
    cons_law_meta = clm.contiguous();
    cons_group_meta = cgm.contiguous();
    cons_table = ct.contiguous();
    start_stride = cs.dim() == 2 ? C : 0;
  }

  ConsView cons_view() const {
    return ConsView{cons_weights.data_ptr<int64_t>(), cons_law_meta.data_ptr<int64_t>(),
                    cons_group_meta.data_ptr<int64_t>(), cons_table.data_ptr<bool>(),
                    C, cons_group_meta.size(0), cons_table.size(0), L};
  }
};

inline void check_alpha(double alpha) {
  TORCH_CHECK(alpha > 0 && std::isfinite(alpha),
              "alpha (the tempering exponent) must be finite and > 0, got ", alpha);
}

}  // namespace nncme
