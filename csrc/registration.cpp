// Every nncme operator schema, in one place. Kernels register themselves per device in
// csrc/cpu/<op>_cpu.cpp and csrc/cuda/<op>_cuda.cu; fake (meta) kernels and autograd live in
// python/nncme/ops/. The plain-PyTorch definition of each op is in nncme/ops/reference.py.
//
// Network arguments (nncme.network.CompiledNetwork): rxn_ptr (K+1,) int64; rxn_entries (nnz, 3)
// int64 rows (species, reactant order, net change); limits (L,) int64; rates (K,) float32/64;
// convention (K,) int64 per reaction, 0 falling factorial | 1 binomial | 2 power; the factor
// table: reaction k owns factors factor_ptr[k] .. factor_ptr[k+1]-1 (factor_ptr (K+1,) int64),
// each reading species factor_index[f] ((F,) int64) with factor_params[f] ((F, 3) rates.dtype)
// = (kind, a, b): kind 0 Hill activation x^b/(a^b+x^b), 1 Hill repression a^b/(a^b+x^b),
// 2 complement f(a - x, b) in the reaction's convention (0 where a - x < 0).
// a_k(n) = rates[k] * prod_entries f(n_i, order) * prod_factors, in the operators below.
#include <torch/library.h>

TORCH_LIBRARY(nncme, m) {
  // states (B, L) int64 -> (B, K) rates.dtype: a_k(n), 0 where n or n + s_k leaves the box.
  m.def(
      "propensities(Tensor states, Tensor rxn_ptr, Tensor rxn_entries, Tensor limits, "
      "Tensor rates, Tensor convention, Tensor factor_ptr, Tensor factor_index, "
      "Tensor factor_params) -> Tensor");
  // states (B, L) int64 -> nbr (B, K, L) int64 = n - s_k (n itself where invalid),
  // valid (B, K) bool: n and n - s_k in the box.
  m.def(
      "neighbors(Tensor states, Tensor rxn_ptr, Tensor rxn_entries, Tensor limits) "
      "-> (Tensor, Tensor)");
  // states (B, L) int64, log_q (B,), log_q_nbr (B, K) -> log T q (B,), (W q)/q (B,),
  // exit rate a_0 (B,), all in rates.dtype; T = I + dt W.
  m.def(
      "transition_logsum(Tensor states, Tensor log_q, Tensor log_q_nbr, Tensor rxn_ptr, "
      "Tensor rxn_entries, Tensor limits, Tensor rates, Tensor convention, Tensor factor_ptr, "
      "Tensor factor_index, Tensor factor_params, float dt) -> (Tensor, Tensor, Tensor)");
  // NADE sampling: uniforms (B, L), hidden0 (B, H), embed (L, M, H), head_w (L, M, H),
  // head_b (L, M), limits (L,) int64, conservation tables (C = 0 for none), cons_start (B, C)
  // int64, alpha (tempering), activation 0 sigmoid | 1 tanh
  // -> samples (B, L) int64, log_q (B,), log_rho (B,) in hidden0.dtype.
  m.def(
      "nade_sample(Tensor uniforms, Tensor hidden0, Tensor embed, Tensor head_w, Tensor head_b, "
      "Tensor limits, Tensor cons_weights, Tensor cons_start, Tensor cons_law_meta, "
      "Tensor cons_group_meta, Tensor cons_table, float alpha, int activation) "
      "-> (Tensor, Tensor, Tensor)");
  // NADE log-probability of given states (B, L) int64 -> (B,) hidden0.dtype (no gradient).
  m.def(
      "nade_log_prob(Tensor states, Tensor hidden0, Tensor embed, Tensor head_w, Tensor head_b, "
      "Tensor limits, Tensor cons_weights, Tensor cons_start, Tensor cons_law_meta, "
      "Tensor cons_group_meta, Tensor cons_table, int activation) -> Tensor");
  // Natural-gradient / TDVP solve per block g: with weights w (G, N) (self-normalised), centre
  // O (G, N, P) and v (G, N) by their weighted means, scale rows by sqrt(w) and solve
  // (O_c^T O_c + shift I) x = O_c^T v_c, in parameter space (P x P) or, through Woodbury, in
  // sample space x = O_c^T (O_c O_c^T + shift I)^-1 v_c (N x N); mode 0 auto (the smaller),
  // 1 parameter, 2 sample. A block whose factorisation fails has its shift raised (x10; from 0 to
  // eps times its mean diagonal), at most max_raises times, else the op raises a LinAlgError.
  // -> x (G, P), shift used (G,), both in O.dtype.
  m.def(
      "fisher_solve(Tensor O, Tensor v, Tensor w, float shift, int mode, int max_raises) "
      "-> (Tensor, Tensor)");
  // The sample-space solve of fisher_solve from the uncentred Gram matrix K (G, N, N) = O O^T
  // (symmetric) alone, v and w (G, N) as above: centres K under w, K_c = (I - 1 w^T) K
  // (I - w 1^T), and solves (W^1/2 K_c W^1/2 + shift I) y = W^1/2 (v - w.v) with the same shift
  // raises and LinAlgError. -> coef (G, N) with x = sum_n coef_n O_n (gamma = W^1/2 y,
  // coef = gamma - w sum(gamma)), shift used (G,), both in K.dtype.
  m.def(
      "fisher_solve.gram(Tensor K, Tensor v, Tensor w, float shift, int max_raises) "
      "-> (Tensor, Tensor)");
}
