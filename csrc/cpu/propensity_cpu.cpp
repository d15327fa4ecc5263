// CPU kernels of nncme::propensities and nncme::neighbors: one state per task, O(nnz) per
// (state, reaction), parallel over the batch with at::parallel_for (OpenMP).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"

namespace nncme {
namespace {

int64_t grain_for(int64_t work_per_row) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_row));
}

at::Tensor propensities_cpu(const at::Tensor& states_in, const at::Tensor& rxn_ptr,
                            const at::Tensor& rxn_entries, const at::Tensor& limits,
                            const at::Tensor& rates, const at::Tensor& convention,
                            const at::Tensor& factor_ptr, const at::Tensor& factor_index,
                            const at::Tensor& factor_params) {
  const int64_t uniform = check_network(states_in, rxn_ptr, rxn_entries, limits, rates,
                                        convention, factor_ptr, factor_index, factor_params);
  check_states(states_in, limits);
  const at::Tensor states = states_in.contiguous();
  const NetworkArgs args(rxn_ptr, rxn_entries, limits, rates, convention, factor_ptr,
                         factor_index, factor_params, uniform);
  const int64_t B = states.size(0), L = states.size(1), K = rates.size(0);
  at::Tensor out = at::empty({B, K}, rates.options());
  AT_DISPATCH_FLOATING_TYPES(rates.scalar_type(), "propensities_cpu", [&] {
    const auto net = args.view<scalar_t>();
    const int64_t* n_all = states.data_ptr<int64_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    dispatch_network(net, [&](auto conv, auto factors) {
      at::parallel_for(0, B, grain_for(K * 4 + L), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t* n = n_all + b * L;
          scalar_t* row = out_p + b * K;
          if (!in_box(n, 1, net)) {
            std::fill(row, row + K, scalar_t(0));
            continue;
          }
          for (int64_t k = 0; k < K; ++k) {
            row[k] = reaction_propensity<scalar_t, conv(), factors()>(n, 1, k, net, false);
          }
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> neighbors_cpu(const at::Tensor& states_in,
                                                 const at::Tensor& rxn_ptr_in,
                                                 const at::Tensor& rxn_entries_in,
                                                 const at::Tensor& limits_in) {
  check_devices("states", states_in.device(),
                {{"rxn_ptr", rxn_ptr_in}, {"rxn_entries", rxn_entries_in}, {"limits", limits_in}});
  check_reaction_tables(rxn_ptr_in, rxn_entries_in, limits_in);
  check_states(states_in, limits_in);
  const at::Tensor states = states_in.contiguous(), rxn_ptr = rxn_ptr_in.contiguous(),
                   entries = rxn_entries_in.contiguous(), limits = limits_in.contiguous();
  const int64_t B = states.size(0), L = states.size(1), K = rxn_ptr.size(0) - 1;
  at::Tensor nbr = at::empty({B, K, L}, states.options());
  at::Tensor valid = at::empty({B, K}, states.options().dtype(at::kBool));
  const int64_t* n_all = states.data_ptr<int64_t>();
  const int64_t* ptr = rxn_ptr.data_ptr<int64_t>();
  const int64_t* ent = entries.data_ptr<int64_t>();
  const int64_t* lim = limits.data_ptr<int64_t>();
  int64_t* nbr_p = nbr.data_ptr<int64_t>();
  bool* valid_p = valid.data_ptr<bool>();
  at::parallel_for(0, B, grain_for(K * (L + 4)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* n = n_all + b * L;
      bool box = true;
      for (int64_t i = 0; i < L; ++i) box = box && n[i] >= 0 && n[i] < lim[i];
      for (int64_t k = 0; k < K; ++k) {
        int64_t* out = nbr_p + (b * K + k) * L;
        std::copy(n, n + L, out);
        bool ok = box;
        for (int64_t e = ptr[k]; e < ptr[k + 1] && ok; ++e) {
          const int64_t m = n[ent[3 * e]] - ent[3 * e + 2];
          ok = m >= 0 && m < lim[ent[3 * e]];
        }
        valid_p[b * K + k] = ok;
        if (ok) {
          for (int64_t e = ptr[k]; e < ptr[k + 1]; ++e) out[ent[3 * e]] -= ent[3 * e + 2];
        }
      }
    }
  });
  return {nbr, valid};
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CPU, m) {
  m.impl("propensities", &propensities_cpu);
  m.impl("neighbors", &neighbors_cpu);
}

}  // namespace nncme
