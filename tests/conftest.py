"""Shared fixtures: devices to test on, a seeded random generator, random reaction networks.

The `rng` fixture is seeded from NNCME_TEST_SEED (default 0, so a run is reproducible; an
integer, or "random" for a fresh seed) and the test's name, so each test's draws do not depend
on which other tests ran. A failing test's report prints the setting that replays it.
"""

from __future__ import annotations

import os
import secrets
import zlib

import numpy as np
import pytest
import torch

import nncme
from nncme import Complement, Hill, Reaction, ReactionNetwork

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Under pytest-xdist (`make test`: a worker per core) each worker takes its share of the cores'
# threads, so the workers do not oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def random_network(
    rng: np.random.Generator,
    L: int,
    K: int,
    *,
    max_limit: int = 12,
    max_order: int = 3,
    factor_fraction: float = 0.3,
    convention: str | None = None,
    own_convention_fraction: float = 0.3,
) -> ReactionNetwork:
    """A random network of L species and K reactions: orders up to max_order; with probability
    factor_fraction a reaction gets one or two Hill factors, and independently a complement
    factor; with probability own_convention_fraction it sets its own mass-action convention."""
    limits = rng.integers(1, max_limit + 1, size=L)
    limits[rng.integers(L)] = max(2, int(limits.max()))
    names = [f"S{i}" for i in range(L)]
    conventions = ["falling", "binomial", "power"]
    reactions = []
    while len(reactions) < K:
        nr = int(rng.integers(0, min(3, L) + 1))
        npd = int(rng.integers(0, min(3, L) + 1))
        reac = {
            names[i]: int(rng.integers(1, max_order + 1)) for i in rng.choice(L, nr, replace=False)
        }
        prod = {
            names[i]: int(rng.integers(1, max_order + 1)) for i in rng.choice(L, npd, replace=False)
        }
        if all(reac.get(s, 0) == prod.get(s, 0) for s in set(reac) | set(prod)):
            continue
        hills: list[Hill] = []
        if rng.random() < factor_fraction:
            hills = [
                Hill(
                    names[int(rng.integers(L))],
                    float(rng.uniform(0.5, 10)),
                    float(rng.uniform(0.5, 4)),
                    "activation" if rng.random() < 0.5 else "repression",
                )
                for _ in range(int(rng.integers(1, 3)))
            ]
        complement = None
        if rng.random() < factor_fraction:
            i = int(rng.integers(L))  # total >= the largest count: total - n_i >= 0 in the box
            total = int(limits[i]) - 1 + int(rng.integers(0, 3))
            complement = Complement(names[i], total, int(rng.integers(1, 3)))
        own = None
        if rng.random() < own_convention_fraction:
            own = conventions[int(rng.integers(3))]
        reactions.append(
            Reaction(
                reac,
                prod,
                float(rng.uniform(0.01, 5)),
                f"r{len(reactions)}",
                hill=hills[0] if len(hills) == 1 else (hills or None),
                complement=complement,
                convention=own,
            )
        )
    conv = convention or str(rng.choice(conventions))
    return ReactionNetwork(
        dict(zip(names, limits.tolist())), reactions, {}, convention=conv, conservation=[]
    )


def random_states(
    rng: np.random.Generator, net: ReactionNetwork, B: int, outside: float = 0.1
) -> torch.Tensor:
    """(B, L) int64 states, a fraction `outside` of rows with a count outside the box."""
    states = rng.integers(0, net.limits, size=(B, net.L))
    bad = rng.random(B) < outside
    if bad.any():
        cols = rng.integers(0, net.L, size=int(bad.sum()))
        states[np.nonzero(bad)[0], cols] = rng.choice([-1, -3, 1000], size=int(bad.sum()))
        # push some to exactly the limit, the first count outside
        states[np.nonzero(bad)[0][::2], cols[::2]] = net.limits[cols[::2]]
    return torch.as_tensor(states, dtype=torch.int64)


def _session_seed() -> int:
    text = os.environ.get("NNCME_TEST_SEED", "0").strip()
    if text == "random":
        return secrets.randbits(32)
    try:
        return int(text)
    except ValueError:
        raise pytest.UsageError(f"NNCME_TEST_SEED: an integer or 'random', got {text!r}") from None


SEED = _session_seed()


def pytest_report_header(config) -> str:
    return f"nncme: random inputs seeded with NNCME_TEST_SEED={SEED}"


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A numpy generator seeded by the session seed and the test's id."""
    seed = (SEED * 1_000_003 + zlib.crc32(request.node.nodeid.encode())) % 2**63
    request.node.add_report_section(
        "call", "seed", f"random inputs from NNCME_TEST_SEED={SEED} (test seed {seed})"
    )
    return np.random.default_rng(seed)


assert nncme  # the package must import (and with NNCME_REQUIRE_EXTENSION=1, its extension)
