"""Linear conservation laws: detection from the stoichiometry and feasibility tables for samplers.

A conservation law is an integer weight vector w (L,) with w . s_k = 0 for every reaction's net
change s_k, so sum_i w_i n_i stays at the total it had in the initial state. Autoregressive
samplers honour the laws by masking, at species i, every count that leaves the remaining total
unreachable by the species after i. Whether a remainder is reachable is a subset-sum question;
`FeasibilityTables` answers it exactly by dynamic programming over the box, jointly for laws
that share species (so overlapping laws such as the enzyme totals of MAPK are exact too).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = ["ConservationLaw", "FeasibilityTables", "detect_conservation_laws"]

# Joint tables larger than this (entries over all positions) are split into one table per law:
# masks are then necessary conditions only, and a sampler may reach a dead end (reported).
MAX_TABLE_ENTRIES = 1 << 24


@dataclass(frozen=True)
class ConservationLaw:
    """sum_i weights[i] * n_i == total for every reachable state.

    Attributes:
        weights: (L,) int64 integer weights (smallest integers, first non-zero entry positive).
        total: the conserved value, taken from the initial state.
        name: a readable form such as "S + I + R".
    """

    weights: np.ndarray
    total: int
    name: str

    def holds(self, states: np.ndarray) -> np.ndarray:
        """(B, L) integer states -> (B,) bool, whether each state satisfies the law."""
        return np.asarray(states, dtype=np.int64) @ self.weights == self.total


def law_name(weights: np.ndarray, species: list[str]) -> str:
    terms = []
    for w, s in zip(weights.tolist(), species):
        if w == 0:
            continue
        sign = "-" if w < 0 else "+"
        mag = "" if abs(w) == 1 else f"{abs(w)} "
        terms.append(f"{sign} {mag}{s}")
    text = " ".join(terms)
    return text[2:] if text.startswith("+ ") else text


def _integer_row(row: np.ndarray) -> np.ndarray | None:
    """Scale a float row with small rational entries to the smallest integer vector."""
    fracs = [Fraction(float(x)).limit_denominator(1000) for x in row]
    if any(abs(float(f) - x) > 1e-7 for f, x in zip(fracs, row)):
        return None
    denom = math.lcm(*(f.denominator for f in fracs)) if fracs else 1
    ints = [int(f * denom) for f in fracs]
    g = math.gcd(*ints) if any(ints) else 1
    ints = [v // g for v in ints]
    first = next((v for v in ints if v != 0), 0)
    if first < 0:
        ints = [-v for v in ints]
    return np.array(ints, dtype=np.int64)


def detect_conservation_laws(change: np.ndarray) -> list[np.ndarray]:
    """Integer basis of the left null space of the stoichiometry.

    Args:
        change: (K, L) net changes s_k.

    Returns:
        Integer weight vectors w (L,) with change @ w == 0, in reduced row echelon form (so each
        law has a pivot species that no other law uses). Laws that cannot be written with small
        rational coefficients are skipped with a warning; declare them on the network instead.
    """
    change = np.asarray(change, dtype=np.float64)
    K, L = change.shape
    if K == 0:
        return [np.eye(L, dtype=np.int64)[i] for i in range(L)]
    # {w : change @ w = 0} is the null space of the L x L Gram matrix change^T change. Its
    # eigendecomposition costs O(K L^2 + L^3); the full SVD it replaces also formed the K x K
    # factor: 78 s for a 32x32 reaction-diffusion lattice (8064 x 1024), now ~4 s of CPU.
    # The Gram matrix of integer stoichiometry has integer entries, so its nonzero
    # eigenvalues sit far above the round-off of its zero ones (~1e-16 * largest).
    gram = change.T @ change
    evals, evecs = np.linalg.eigh(gram)
    tol = 1e-9 * max(float(evals[-1]), 1.0)
    null = evals <= tol
    if not null.any():
        return []
    basis = evecs[:, null].T  # (L - rank, L), orthonormal rows
    rref = _rref(basis)
    laws = []
    for row in rref:
        ints = _integer_row(row)
        if ints is None or np.any(change.astype(np.int64) @ ints != 0):
            warnings.warn(
                "a conservation law of this network has coefficients that are not small "
                "rationals; it was not detected. Declare it on the network if samplers must "
                "honour it.",
                stacklevel=3,
            )
            continue
        laws.append(ints)
    return laws


def _rref(a: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    a = a.copy()
    rows, cols = a.shape
    r = 0
    for c in range(cols):
        if r == rows:
            break
        pivot = r + int(np.argmax(np.abs(a[r:, c])))
        if abs(a[pivot, c]) < tol:
            continue
        a[[r, pivot]] = a[[pivot, r]]
        a[r] /= a[r, c]
        for i in range(rows):
            if i != r:
                a[i] -= a[i, c] * a[r]
        r += 1
    a[np.abs(a) < tol] = 0.0
    return a[:r]


@dataclass(frozen=True)
class FeasibilityTables:
    """Reachability of conserved remainders, laid out for the sampling kernels.

    For a group g of laws (laws sharing species), table g at position i (0..L) answers: can the
    species i..L-1, each within its box, make the remainder vector r exactly? The remainder of
    law l before species i is total_l - sum_{j<i} w_lj n_j. Count m of species i is allowed iff
    every group's table at position i+1 holds the remainders after subtracting w_li * m.

    Attributes:
        weights: (C, L) int64 law weights.
        totals: (C,) int64 law totals.
        law_meta: (C, 4) int64 rows (group, stride, lo, extent): remainder r of law l is
            stored at offset stride * (r - lo) and is in range iff 0 <= r - lo < extent.
        group_meta: (G, 2) int64 rows (base, size): table g at position i starts at
            base + i * size in `table`.
        table: (sum_g (L+1) * size_g,) bool.
        exact: False where a group was too large for one joint table and was split per law;
            masks are then necessary conditions only and a sampler may reach a dead end.
    """

    weights: np.ndarray
    totals: np.ndarray
    law_meta: np.ndarray
    group_meta: np.ndarray
    table: np.ndarray
    exact: bool

    @staticmethod
    def build(laws: list[ConservationLaw], limits: np.ndarray) -> FeasibilityTables:
        limits = np.asarray(limits, dtype=np.int64)
        L = limits.shape[0]
        C = len(laws)
        weights = np.stack([law.weights for law in laws]) if C else np.zeros((0, L), np.int64)
        totals = np.array([law.total for law in laws], dtype=np.int64)
        groups, exact = _group_laws(weights, limits)
        law_meta = np.zeros((C, 4), dtype=np.int64)
        group_meta = np.zeros((len(groups), 2), dtype=np.int64)
        tables = []
        base = 0
        for g, members in enumerate(groups):
            los, extents = [], []
            for law in members:
                w = weights[law]
                lo = int(np.minimum(w, 0) @ (limits - 1))
                hi = int(np.maximum(w, 0) @ (limits - 1))
                los.append(lo)
                extents.append(hi - lo + 1)
            strides = np.cumprod([1, *extents[::-1][:-1]])[::-1].tolist()
            for law, lo, ext, stride in zip(members, los, extents, strides):
                law_meta[law] = (g, stride, lo, ext)
            tab = _suffix_reachability(weights[members], limits, los, extents)  # (L+1, *extents)
            size = int(np.prod(extents))
            group_meta[g] = (base, size)
            tables.append(tab.reshape(L + 1, size).reshape(-1))
            base += (L + 1) * size
        table = np.concatenate(tables) if tables else np.zeros(0, dtype=bool)
        return FeasibilityTables(weights, totals, law_meta, group_meta, table, exact)

    def feasible_start(self) -> bool:
        """Whether the totals are reachable at all within the limits."""
        ok = True
        for g, (base, _size) in enumerate(self.group_meta):
            members = np.nonzero(self.law_meta[:, 0] == g)[0]
            offset = 0
            for law in members:
                _, stride, lo, ext = self.law_meta[law]
                r = self.totals[law] - lo
                if not 0 <= r < ext:
                    return False
                offset += stride * r
            ok &= bool(self.table[base + offset])
        return ok


def _group_laws(weights: np.ndarray, limits: np.ndarray) -> tuple[list[list[int]], bool]:
    """Connected components of laws that share species; split components too big to tabulate."""
    C, L = weights.shape
    parent = list(range(C))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(L):
        users = np.nonzero(weights[:, i])[0]
        for u in users[1:]:
            parent[find(int(u))] = find(int(users[0]))
    comps: dict[int, list[int]] = {}
    for c in range(C):
        comps.setdefault(find(c), []).append(c)
    groups, exact = [], True
    for members in comps.values():
        size = 1
        for law in members:
            w = weights[law]
            size *= int(np.abs(w) @ (limits - 1)) + 1
        if len(members) > 1 and size * (L + 1) > MAX_TABLE_ENTRIES:
            exact = False
            groups.extend([[law] for law in members])
        else:
            groups.append(members)
    return groups, exact


def _suffix_reachability(
    weights: np.ndarray, limits: np.ndarray, los: list[int], extents: list[int]
) -> np.ndarray:
    """(L+1, *extents) bool: can species i.. make remainder r (offset by lo) exactly."""
    L = limits.shape[0]
    tab = np.zeros((L + 1, *extents), dtype=bool)
    zero = tuple(-lo for lo in los)
    tab[(L, *zero)] = True
    for i in range(L - 1, -1, -1):
        w = weights[:, i]
        acc = np.zeros(extents, dtype=bool)
        if not np.any(w):
            tab[i] = tab[i + 1]
            continue
        for m in range(int(limits[i])):
            # remainder r before species i is reachable if r - w*m is reachable after it.
            acc |= _shift(tab[i + 1], w * m)
        tab[i] = acc
    return tab


def _shift(a: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """out[r] = a[r - offset], False where r - offset falls outside."""
    out = np.zeros_like(a)
    src, dst = [], []
    for d, o in enumerate(offset.tolist()):
        n = a.shape[d]
        if abs(o) >= n:
            return out
        if o >= 0:
            src.append(slice(0, n - o))
            dst.append(slice(o, n))
        else:
            src.append(slice(-o, n))
            dst.append(slice(0, n + o))
    out[tuple(dst)] = a[tuple(src)]
    return out
