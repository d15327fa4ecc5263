// Argument checks shared by the CPU and CUDA entry points: a caller's mistake becomes a message
// that names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include "network_math.h"

namespace nncme {

inline void check_network(
    const at::Tensor& rxn_ptr, const at::Tensor& rxn_entries, const at::Tensor& limits,
    const at::Tensor& rates, const at::Tensor& hill_index, const at::Tensor& hill_params,
    int64_t convention, const at::Device& device) {
  const auto K = rates.size(0);
  TORCH_CHECK(rates.dim() == 1 && rates.is_floating_point(), "rates must be a 1-D float tensor");
  TORCH_CHECK(rxn_ptr.dim() == 1 && rxn_ptr.size(0) == K + 1 && rxn_ptr.scalar_type() == at::kLong,
              "rxn_ptr must be int64 of shape (K+1,) = (", K + 1, ",), got ", rxn_ptr.sizes());
  TORCH_CHECK(rxn_entries.dim() == 2 && rxn_entries.size(1) == 3 &&
                  rxn_entries.scalar_type() == at::kLong,
              "rxn_entries must be int64 of shape (nnz, 3), got ", rxn_entries.sizes());
  TORCH_CHECK(limits.dim() == 1 && limits.scalar_type() == at::kLong, "limits must be int64 (L,)");
  TORCH_CHECK(hill_index.dim() == 1 && hill_index.size(0) == K &&
                  hill_index.scalar_type() == at::kLong,
              "hill_index must be int64 of shape (K,)");
  TORCH_CHECK(hill_params.dim() == 2 && hill_params.size(0) == K && hill_params.size(1) == 3 &&
                  hill_params.scalar_type() == rates.scalar_type(),
              "hill_params must have shape (K, 3) and the dtype of rates");
  TORCH_CHECK(convention >= kFalling && convention <= kPower,
              "convention must be 0 (falling), 1 (binomial) or 2 (power), got ", convention);
  for (const at::Tensor* t : {&rxn_ptr, &rxn_entries, &limits, &rates, &hill_index, &hill_params}) {
    TORCH_CHECK(t->device() == device, "network tensors must be on ", device, ", got ",
                t->device());
  }
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
  TORCH_CHECK(log_q.device() == states.device() && log_q_nbr.device() == states.device(),
              "log_q and log_q_nbr must be on the device of states");
  TORCH_CHECK(dt > 0 && std::isfinite(dt), "dt must be finite and > 0, got ", dt);
}

}  // namespace nncme
