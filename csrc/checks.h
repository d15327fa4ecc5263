// Argument checks shared by the CPU and CUDA entry points: a caller's mistake becomes a message
// that names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "device_checks.h"
#include "network_math.h"

namespace nncme {

// The reaction tables of a network, the one place they are validated (every op that takes them
// calls this): rxn_ptr (K+1,), rxn_entries (nnz, 3) and limits (L,) int64, and hill_index (K,)
// int64 where given (undefined: the op does not read it). Beyond shapes and dtypes, the contents
// are checked so that no table can send a kernel out of bounds: rxn_ptr starts at 0, never
// decreases and ends at nnz; species indices are in [0, L); reactant orders are >= 0; a Hill
// regulator is -1 (none) or a species. The tables are tiny (K + 1 + 3 nnz + K integers), so they
// are read on the host once per op call; for CUDA tensors that costs one small device-to-host
// copy (and a stream sync), the price of kernels that trust their tables.
inline void check_reaction_tables(const at::Tensor& rxn_ptr, const at::Tensor& rxn_entries,
                                  const at::Tensor& limits, const at::Tensor& hill_index) {
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
  if (hill_index.defined()) {
    TORCH_CHECK(hill_index.dim() == 1 && hill_index.size(0) == K &&
                    hill_index.scalar_type() == at::kLong,
                "hill_index must be int64 of shape (K,) = (", K, ",), got ",
                hill_index.scalar_type(), " ", hill_index.sizes());
    parts.push_back(hill_index);
  }
  const at::Tensor host = at::cat(parts).to(at::kCPU).contiguous();  // one copy from a GPU
  const int64_t* ptr = host.data_ptr<int64_t>();
  const int64_t* ent = ptr + (K + 1);
  TORCH_CHECK(ptr[0] == 0, "rxn_ptr must start at 0, got rxn_ptr[0] = ", ptr[0]);
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK(ptr[k + 1] >= ptr[k],
                "rxn_ptr must be non-decreasing (reaction k owns rxn_entries rows rxn_ptr[k] to "
                "rxn_ptr[k+1] - 1), got rxn_ptr[",
                k, "] = ", ptr[k], " > rxn_ptr[", k + 1, "] = ", ptr[k + 1]);
  }
  TORCH_CHECK(ptr[K] == nnz, "rxn_ptr must end at nnz = rxn_entries.size(0) = ", nnz,
              ", got rxn_ptr[", K, "] = ", ptr[K]);
  for (int64_t e = 0; e < nnz; ++e) {
    const int64_t species = ent[3 * e], order = ent[3 * e + 1];
    TORCH_CHECK(species >= 0 && species < L, "rxn_entries[", e,
                ", 0] must be a species index in [0, L) = [0, ", L, "), got ", species);
    TORCH_CHECK(order >= 0, "rxn_entries[", e, ", 1] (a reactant order) must be >= 0, got ",
                order);
  }
  if (hill_index.defined()) {
    const int64_t* hill = ent + 3 * nnz;
    for (int64_t k = 0; k < K; ++k) {
      TORCH_CHECK(hill[k] >= -1 && hill[k] < L, "hill_index[", k,
                  "] must be -1 (no Hill factor) or a species index in [0, L) = [0, ", L,
                  "), got ", hill[k]);
    }
  }
}

// The network arguments of propensities and transition_logsum, against the device of states.
inline void check_network(const at::Tensor& states, const at::Tensor& rxn_ptr,
                          const at::Tensor& rxn_entries, const at::Tensor& limits,
                          const at::Tensor& rates, const at::Tensor& hill_index,
                          const at::Tensor& hill_params, int64_t convention) {
  TORCH_CHECK(rates.dim() == 1 && rates.is_floating_point(),
              "rates must be a 1-D float tensor of shape (K,), got ", rates.scalar_type(), " ",
              rates.sizes());
  const auto K = rates.size(0);
  TORCH_CHECK(rxn_ptr.dim() == 1 && rxn_ptr.size(0) == K + 1,
              "rxn_ptr must have shape (K+1,) = (", K + 1, ",) for K = rates.size(0), got ",
              rxn_ptr.sizes());
  TORCH_CHECK(hill_params.dim() == 2 && hill_params.size(0) == K && hill_params.size(1) == 3 &&
                  hill_params.scalar_type() == rates.scalar_type(),
              "hill_params must have shape (K, 3) = (", K, ", 3) and the dtype of rates (",
              rates.scalar_type(), "), got ", hill_params.scalar_type(), " ",
              hill_params.sizes());
  TORCH_CHECK(convention >= kFalling && convention <= kPower,
              "convention must be 0 (falling), 1 (binomial) or 2 (power), got ", convention);
  check_devices("states", states.device(),
                {{"rxn_ptr", rxn_ptr},
                 {"rxn_entries", rxn_entries},
                 {"limits", limits},
                 {"rates", rates},
                 {"hill_index", hill_index},
                 {"hill_params", hill_params}});
  check_reaction_tables(rxn_ptr, rxn_entries, limits, hill_index);
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
  at::Tensor rxn_ptr, entries, limits, rates, hill_index, hill_params;
  int64_t convention;
  NetworkArgs(const at::Tensor& p, const at::Tensor& e, const at::Tensor& l, const at::Tensor& r,
              const at::Tensor& hi, const at::Tensor& hp, int64_t conv)
      : rxn_ptr(p.contiguous()), entries(e.contiguous()), limits(l.contiguous()),
        rates(r.contiguous()), hill_index(hi.contiguous()), hill_params(hp.contiguous()),
        convention(conv) {}
  template <typename scalar_t>
  NetworkView<scalar_t> view() const {
    return NetworkView<scalar_t>{rxn_ptr.data_ptr<int64_t>(), entries.data_ptr<int64_t>(),
                                 limits.data_ptr<int64_t>(),  rates.data_ptr<scalar_t>(),
                                 hill_index.data_ptr<int64_t>(), hill_params.data_ptr<scalar_t>(),
                                 convention, limits.size(0), rates.size(0)};
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
