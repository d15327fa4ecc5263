// nncme::fisher_solve: the centred, weighted Gram solve of natural gradient and TDVP, for a batch
// of independent blocks, as one composite of ATen calls (GEMMs, Cholesky) that runs on whatever
// device the inputs are on: the same code is the CPU and the CUDA kernel. Two overloads share one
// shift policy (factor_with_raises): the default one from the per-sample gradients O, and
// fisher_solve.gram from the sample-space Gram matrix K = O O^T alone. Definitions:
// nncme/ops/reference.py (fisher_solve, fisher_solve_gram).
//
// What it saves over the plain composition (centre O, then O_c^T O_c or O_c O_c^T, then
// cholesky_ex + cholesky_solve):
//   - O_c = sqrt(w) (O - mean) is never materialised: it is formed one panel at a time (rows in
//     parameter space, columns in sample space), so the extra memory is one panel, not a copy
//     of O (3.3 GB at N = 4096, P = 1e5 in float64);
//   - the Gram matrix is symmetric, so only its lower block triangle is multiplied (T(T+1)/2 of
//     T^2 block products, ~0.55-0.6 of the flops for the usual T = 6..8) and then mirrored.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "device_checks.h"

namespace nncme {
namespace {

enum FisherMode : int64_t { kAuto = 0, kParameter = 1, kSample = 2 };

// Rows of the Gram matrix per block: at least 512 (smaller block products lose more GEMM
// efficiency than the triangle saves, measured with MKL), at most 4 blocks a side (10 of 16
// products).
int64_t gram_block(int64_t n) { return std::max<int64_t>(512, (n + 3) / 4); }

// A (G, n, n) = X X^T (accumulate: A += X X^T) for X (G, n, k) (any strides), multiplying only
// blocks on or below the diagonal. The upper blocks are not written; mirror_lower fills them.
void add_gram_lower(at::Tensor& A, const at::Tensor& X, bool accumulate) {
  const int64_t n = X.size(1), nb = gram_block(n);
  for (int64_t i0 = 0; i0 < n; i0 += nb) {
    const int64_t ni = std::min(nb, n - i0);
    const at::Tensor Xi = X.narrow(1, i0, ni);
    for (int64_t j0 = 0; j0 <= i0; j0 += nb) {
      const int64_t nj = std::min(nb, n - j0);
      at::Tensor Aij = A.narrow(1, i0, ni).narrow(2, j0, nj);
      // beta = 0 on the first panel: A starts uninitialised and is not read
      Aij.baddbmm_(Xi, X.narrow(1, j0, nj).transpose(1, 2), accumulate ? 1.0 : 0.0);
    }
  }
}

// Copies the lower blocks of A onto the upper ones (the block layout of add_gram_lower).
void mirror_lower(at::Tensor& A) {
  const int64_t n = A.size(1), nb = gram_block(n);
  for (int64_t i0 = 0; i0 < n; i0 += nb) {
    const int64_t ni = std::min(nb, n - i0);
    for (int64_t j0 = i0 + nb; j0 < n; j0 += nb) {
      const int64_t nj = std::min(nb, n - j0);
      A.narrow(1, i0, ni).narrow(2, j0, nj).copy_(
          A.narrow(1, j0, nj).narrow(2, i0, ni).transpose(1, 2));
    }
  }
}

// Panel width (in rows or columns of O) so that one centred panel takes about 64 MiB
// (NNCME_FISHER_PANEL_BYTES overrides it; the tests shrink it to cover the panel loop).
int64_t panel_width(int64_t G, int64_t other, int64_t elem_size, int64_t total) {
  int64_t budget = int64_t(64) << 20, floor = 256;  // below 256 the GEMMs lose efficiency
  if (const char* env = std::getenv("NNCME_FISHER_PANEL_BYTES")) {
    budget = std::atoll(env);
    floor = 1;
  }
  const int64_t w = budget / std::max<int64_t>(1, G * other * elem_size);
  return std::clamp<int64_t>(w, std::min(floor, total), std::max<int64_t>(total, 1));
}

// The next shift of a block whose factorisation failed: x10, or from 0 the dtype's epsilon times
// the mean diagonal (the size of a rounding error of the Gram matrix; eps itself for a zero one).
double raised_shift(double shift, double mean_diag, double eps) {
  if (shift > 0) return shift * 10;
  return eps * (mean_diag > 0 ? mean_diag : 1.0);
}

struct ShiftedFactor {
  at::Tensor factor;           // (G, n, n) lower Cholesky factors of A + shift_g I
  std::vector<double> shifts;  // (G,) the shift each block was factored with
};

// The one home of the shift policy of both overloads: factors A + shift I per block (only A's
// lower triangle is read on CPU), and for each block whose factorisation fails raises its shift
// (raised_shift) and factors it again, at most max_raises times; then a LinAlgError (Python:
// torch.linalg.LinAlgError), so that callers can catch exactly this failure and fall back. A is
// the caller's scratch: its diagonal is overwritten. `what` names the inputs in the error.
ShiftedFactor factor_with_raises(at::Tensor& A, double shift, int64_t max_raises,
                                 const char* op, const char* what) {
  const int64_t G = A.size(0);
  const at::Tensor mean_diag = A.diagonal(0, 1, 2).mean(1).to(at::kCPU, at::kDouble);
  std::vector<double> shifts(G, shift);
  const double eps = A.scalar_type() == at::kFloat
                         ? double(std::numeric_limits<float>::epsilon())
                         : std::numeric_limits<double>::epsilon();
  at::Tensor factor;
  const at::Tensor diag = A.diagonal(0, 1, 2).clone();  // (G, n), to re-shift failed blocks
  std::vector<int64_t> todo(G);
  for (int64_t g = 0; g < G; ++g) todo[g] = g;
  for (int64_t attempt = 0;; ++attempt) {
    std::vector<double> todo_shifts;
    for (int64_t g : todo) todo_shifts.push_back(shifts[g]);
    const at::Tensor shift_t = at::tensor(todo_shifts, at::TensorOptions().dtype(at::kDouble))
                                   .to(A.device(), A.scalar_type());
    const at::Tensor index =
        at::tensor(todo, at::TensorOptions().dtype(at::kLong)).to(A.device());
    // The first attempt shifts A in place (cholesky_ex copies it anyway); later ones copy the
    // failed blocks and rebuild their diagonals from the saved one.
    at::Tensor M = attempt == 0 ? A : A.index_select(0, index);
    M.diagonal(0, 1, 2).copy_(diag.index_select(0, index) + shift_t.unsqueeze(1));
    auto [Lf, info] = at::linalg_cholesky_ex(M, /*upper=*/false, /*check_errors=*/false);
    if (attempt == 0) {
      factor = Lf;
    } else {
      factor.index_copy_(0, index, Lf);
    }
    const at::Tensor info_cpu = info.to(at::kCPU, at::kLong).contiguous();
    std::vector<int64_t> failed;
    for (size_t t = 0; t < todo.size(); ++t) {
      if (info_cpu.data_ptr<int64_t>()[t] != 0) failed.push_back(todo[t]);
    }
    if (failed.empty()) break;
    TORCH_CHECK_LINALG(attempt < max_raises, op, ": the Cholesky factorisation of block ",
                       failed[0], " failed with shift ", shifts[failed[0]], " after ", attempt,
                       " raises (max_raises = ", max_raises, "); ", what,
                       " probably contain NaN or inf");
    const double* md = mean_diag.data_ptr<double>();
    for (int64_t g : failed) shifts[g] = raised_shift(shifts[g], md[g], eps);
    todo = failed;
  }
  return {factor, shifts};
}

at::Tensor shifts_tensor(const std::vector<double>& shifts, const at::Tensor& like) {
  return at::tensor(shifts, at::TensorOptions().dtype(at::kDouble))
      .to(like.device(), like.scalar_type());
}

void check_solve_args(const at::Tensor& X, const char* x_name, const at::Tensor& v,
                      const at::Tensor& w, double shift, int64_t max_raises) {
  const int64_t G = X.size(0), N = X.size(1);
  TORCH_CHECK(v.dim() == 2 && v.size(0) == G && v.size(1) == N,
              "v must have shape (G, N) = (", G, ", ", N, "), got ", v.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == G && w.size(1) == N,
              "w must have shape (G, N) = (", G, ", ", N, "), got ", w.sizes());
  TORCH_CHECK(v.scalar_type() == X.scalar_type() && w.scalar_type() == X.scalar_type(),
              "v and w must have the dtype of ", x_name, " (", X.scalar_type(), "), got ",
              v.scalar_type(), " and ", w.scalar_type());
  check_devices(x_name, X.device(), {{"v", v}, {"w", w}});
  TORCH_CHECK(shift >= 0 && std::isfinite(shift), "shift must be finite and >= 0, got ", shift);
  TORCH_CHECK(max_raises >= 0, "max_raises must be >= 0, got ", max_raises);
}

std::tuple<at::Tensor, at::Tensor> fisher_solve(const at::Tensor& O_in, const at::Tensor& v_in,
                                                const at::Tensor& w_in, double shift,
                                                int64_t mode, int64_t max_raises) {
  TORCH_CHECK(O_in.dim() == 3 && (O_in.scalar_type() == at::kFloat ||
                                  O_in.scalar_type() == at::kDouble),
              "O (per-sample gradients) must be float32 or float64 of shape (G, N, P), got ",
              O_in.scalar_type(), " ", O_in.sizes());
  const int64_t G = O_in.size(0), N = O_in.size(1), P = O_in.size(2);
  check_solve_args(O_in, "O", v_in, w_in, shift, max_raises);
  TORCH_CHECK(mode >= kAuto && mode <= kSample,
              "mode must be 0 (auto), 1 (parameter space) or 2 (sample space), got ", mode);
  TORCH_CHECK(N >= 1 && P >= 1, "fisher_solve needs N >= 1 samples and P >= 1 parameters");
  const bool param_space = mode == kParameter || (mode == kAuto && P <= N);
  const at::Tensor& O = O_in;  // read through views; never copied whole
  const at::Tensor w = w_in.contiguous(), v = v_in.contiguous();
  const int64_t elem = O.element_size();

  const at::Tensor mean = at::bmm(w.unsqueeze(1), O);         // (G, 1, P) weighted mean of O
  const at::Tensor vbar = (w * v).sum(1, /*keepdim=*/true);    // (G, 1)
  const at::Tensor sw = w.sqrt();                               // (G, N)
  const at::Tensor vc = (v - vbar) * sw;                        // (G, N) centred, scaled values

  const int64_t n = param_space ? P : N;
  at::Tensor A = at::empty({G, n, n}, O.options());
  at::Tensor b;
  if (param_space) {
    // A = sum over row panels of C^T C, b = C^T vc, C = sqrt(w) (O - mean) rows n0..n0+nr.
    b = at::zeros({G, P, 1}, O.options());
    const int64_t rows = panel_width(G, P, elem, N);
    for (int64_t n0 = 0; n0 < N; n0 += rows) {
      const int64_t nr = std::min(rows, N - n0);
      const at::Tensor C = O.narrow(1, n0, nr).sub(mean).mul_(sw.narrow(1, n0, nr).unsqueeze(2));
      add_gram_lower(A, C.transpose(1, 2), n0 > 0);
      b.baddbmm_(C.transpose(1, 2), vc.narrow(1, n0, nr).unsqueeze(2));
    }
  } else {
    // A = sum over column panels of C C^T, C = sqrt(w) (O - mean) columns p0..p0+np.
    const int64_t cols = panel_width(G, N, elem, P);
    for (int64_t p0 = 0; p0 < P; p0 += cols) {
      const int64_t np = std::min(cols, P - p0);
      const at::Tensor C = O.narrow(2, p0, np).sub(mean.narrow(2, p0, np)).mul_(sw.unsqueeze(2));
      add_gram_lower(A, C, p0 > 0);
    }
    b = vc.unsqueeze(2);
  }
  // LAPACK's potrf reads only the lower triangle (so do the CPU tests, with NaN above it); on
  // CUDA the solver backend varies with the torch build, so the upper blocks are filled there.
  if (!A.is_cpu()) mirror_lower(A);

  const ShiftedFactor sf = factor_with_raises(A, shift, max_raises, "fisher_solve",
                                              "the gradients or values");
  const at::Tensor y = at::cholesky_solve(b, sf.factor, /*upper=*/false);  // (G, n, 1)
  at::Tensor x;
  if (param_space) {
    x = y.squeeze(2);
  } else {
    // x = O_c^T y, panel by panel again: O^T (sqrt(w) y) - mean sum(sqrt(w) y) would need no
    // second centring pass but cancels badly where |mean| >> the spread of O.
    x = at::empty({G, P}, O.options());
    const int64_t cols = panel_width(G, N, elem, P);
    for (int64_t p0 = 0; p0 < P; p0 += cols) {
      const int64_t np = std::min(cols, P - p0);
      const at::Tensor C = O.narrow(2, p0, np).sub(mean.narrow(2, p0, np)).mul_(sw.unsqueeze(2));
      x.narrow(1, p0, np).copy_(at::bmm(C.transpose(1, 2), y).squeeze(2));
    }
  }
  return {x, shifts_tensor(sf.shifts, O)};
}

// fisher_solve.gram: the sample-space solve of fisher_solve from the uncentred Gram matrix
// K = O O^T alone (a NADE's K has a closed form that needs no O). Centring K under w is
// K_c = (I - 1 w^T) K (I - w 1^T); then A = W^1/2 K_c W^1/2 is fisher_solve's sample-space
// matrix, b = W^1/2 (v - w.v) its right-hand side, and x = O_c^T W^1/2 y = sum_n coef_n O_n
// with gamma = W^1/2 y and coef = gamma - w sum(gamma).
std::tuple<at::Tensor, at::Tensor> fisher_solve_gram(const at::Tensor& K_in,
                                                     const at::Tensor& v_in,
                                                     const at::Tensor& w_in, double shift,
                                                     int64_t max_raises) {
  TORCH_CHECK(K_in.dim() == 3 && K_in.size(1) == K_in.size(2) &&
                  (K_in.scalar_type() == at::kFloat || K_in.scalar_type() == at::kDouble),
              "K (the Gram matrix O O^T) must be float32 or float64 of shape (G, N, N), got ",
              K_in.scalar_type(), " ", K_in.sizes());
  check_solve_args(K_in, "K", v_in, w_in, shift, max_raises);
  TORCH_CHECK(K_in.size(1) >= 1, "fisher_solve.gram needs N >= 1 samples");
  const at::Tensor w = w_in.contiguous(), v = v_in.contiguous();
  const at::Tensor wc = w.unsqueeze(2);                        // (G, N, 1)
  const at::Tensor row = at::bmm(wc.transpose(1, 2), K_in);    // (G, 1, N) w^T K
  const at::Tensor col = at::bmm(K_in, wc);                    // (G, N, 1) K w
  const at::Tensor wkw = at::bmm(row, wc);                     // (G, 1, 1) w^T K w
  const at::Tensor sw = w.sqrt();                              // (G, N)
  // A = sw (K - 1 row - col 1^T + wkw) sw^T, in one fresh (G, N, N) buffer
  at::Tensor A = K_in - row;
  A.sub_(col).add_(wkw).mul_(sw.unsqueeze(2)).mul_(sw.unsqueeze(1));
  const at::Tensor vbar = (w * v).sum(1, /*keepdim=*/true);    // (G, 1)
  const at::Tensor b = ((v - vbar) * sw).unsqueeze(2);         // (G, N, 1)
  const ShiftedFactor sf =
      factor_with_raises(A, shift, max_raises, "fisher_solve.gram", "the Gram matrix or values");
  const at::Tensor gamma = at::cholesky_solve(b, sf.factor, /*upper=*/false).squeeze(2) * sw;
  const at::Tensor coef = gamma - w * gamma.sum(1, /*keepdim=*/true);
  return {coef, shifts_tensor(sf.shifts, K_in)};
}

}  // namespace

TORCH_LIBRARY_IMPL(nncme, CPU, m) {
  m.impl("fisher_solve", &fisher_solve);
  m.impl("fisher_solve.gram", &fisher_solve_gram);
}

#if defined(NNCME_WITH_CUDA) && NNCME_WITH_CUDA
TORCH_LIBRARY_IMPL(nncme, CUDA, m) {
  m.impl("fisher_solve", &fisher_solve);
  m.impl("fisher_solve.gram", &fisher_solve_gram);
}
#endif

}  // namespace nncme
