"""Runs over many processes (torch.distributed, gloo on the CPU) against one process.

A fit over two ranks, each with half of a fixed batch, must make the one-process fit's
optimiser steps on the whole batch (to rounding); a whole run over two processes must answer
as one does (against FSP), write what a run writes, and resume to the same parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import stats

import nncme
from nncme import parallel
from nncme.amortise import (
    AmortiseConfig,
    AmortisedSolution,
    AmortisedTrainer,
    ConditionalStage,
    ContextSpace,
    Vary,
    amortise,
    conditional_log_prob,
)
from nncme.config import ConfigError
from nncme.exact import solve_fsp
from nncme.io import save_network
from nncme.metrics import hellinger
from nncme.models import Product, build_model, frozen_copy
from nncme.network import Reaction, ReactionNetwork
from nncme.optim import (
    FisherSolver,
    ImplicitUpdate,
    KLUpdate,
    NaturalGradientUpdate,
    StepProblem,
    TDVPRightHandSide,
    make_optimizer,
)
from nncme.optim.implicit import ImplicitTarget
from nncme.optim.target import StepSizeError, Term, TransitionTarget
from nncme.results import Result
from nncme.sampling import Proposal, unique_states

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")

DT = 0.05


def _network() -> ReactionNetwork:
    """Not in the catalogue: A is made and degraded and turns into B, which decays."""
    return ReactionNetwork(
        {"A": 24, "B": 24},
        [
            Reaction({}, {"A": 1}, 6.0, "make"),
            Reaction({"A": 1}, {}, 1.0, "degrade"),
            Reaction({"A": 1}, {"B": 1}, 0.8, "convert"),
            Reaction({"B": 1}, {}, 0.5, "decay"),
        ],
        {"A": 2},
        t_end=0.25,
        dt=DT,
        name="make-convert",
    )


# ------------------------------------------------------------------ process plumbing
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    fn(rank, *args)  # an exception goes back to mp.spawn, which raises it in the test
    dist.barrier()
    # leave without the interpreter's teardown: under load (CI) the gloo group's threads
    # could abort a process at exit ("terminate called without an active exception") after
    # its work was done and written
    os._exit(0)


def _spawn(fn, world: int, *args) -> None:
    mp.spawn(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True)


# ------------------------------------------------------------------ one fit, fixed batch
class _Fixed(Proposal):
    """A fixed list of states, this rank's share of it, weighted by a made-up rho != q."""

    def __init__(self, states: torch.Tensor) -> None:
        super().__init__()
        self.states = states

    def _draw(self, model, batch_size, generator):
        with torch.no_grad():
            log_q = model.log_prob(self.states)
        return self.states, log_q, self.log_prob(model, self.states)

    @torch.no_grad()
    def log_prob(self, model, states):
        return model.log_prob(states) + 0.4 * torch.sin(states.sum(1).double())


class _FixedSource(ImplicitTarget):
    """The implicit step with a fixed list of q_old's states as its source draw."""

    def __init__(self, *args, source: torch.Tensor, **kw) -> None:
        super().__init__(*args, **kw)
        self.source = source

    def sample_old(self, n, generator):
        return self.source


def _fit(rank: int | None, kind: str, objective: str, out: Path) -> None:
    """Five iterations of a fit on this rank's share of 600 fixed states (rank None: all)."""
    net = _network().compile("cpu", torch.float64)
    model = build_model("nade", _network(), hidden=8, seed=3)
    old = copy.deepcopy(model)
    with torch.no_grad():  # move q away from q_old so that the fit has work to do
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
    states, _ = old.sample(600, torch.Generator().manual_seed(1))
    source, _ = old.sample(300, torch.Generator().manual_seed(2))
    if rank is not None:
        world = parallel.world_size()
        states, source = states[rank::world], source[rank::world]
    if kind == "implicit":
        target = _FixedSource(old, net, 0.0, DT, source=source)
    else:
        target = TransitionTarget(old, net, 0.0, DT)
    options = dict(iterations=5, explore=0.0, objective=objective)
    if kind == "natgrad":
        space = "sample" if objective == "kl" else "parameter"  # both solves of the Fisher
        update = NaturalGradientUpdate(model, lr=0.5, solver=FisherSolver(space=space), **options)
    else:
        optimizer = make_optimizer("adam", model.parameters(), 0.02)
        update = (ImplicitUpdate if kind == "implicit" else KLUpdate)(optimizer, **options)
    problem = StepProblem(model, target, _Fixed(states), states.shape[0], None, 0.0, DT)
    report = update.run(problem)
    if rank in (None, 0):
        params = [p.detach().clone() for p in model.parameters()]
        summary = (params, report.losses, report.residuals, report.ess, report.rate_dt)
        out.write_bytes(pickle.dumps(summary))


@pytest.mark.parametrize(
    "kind, objective",
    [
        ("explicit", "kl"),
        ("explicit", "log_variance"),
        ("implicit", "kl"),
        ("natgrad", "kl"),
        ("natgrad", "log_variance"),
    ],
)
def test_two_processes_make_the_one_process_fit_on_the_same_batch(tmp_path, kind, objective):
    _fit(None, kind, objective, tmp_path / "one.pkl")
    _spawn(_fit, 2, kind, objective, tmp_path / "two.pkl")
    one = pickle.loads((tmp_path / "one.pkl").read_bytes())
    two = pickle.loads((tmp_path / "two.pkl").read_bytes())
    for a, b in zip(one[0], two[0]):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(two[1], one[1], rtol=1e-9, atol=1e-14)  # losses
    np.testing.assert_allclose(two[2], one[2], rtol=1e-7, atol=1e-16)  # residuals
    assert two[3] == pytest.approx(one[3], rel=1e-12)  # the ESS of the whole batch
    assert two[4] == pytest.approx(one[4], rel=1e-12)  # the fastest rate seen by any rank
    assert one[1][0] != one[1][-1]  # the fit moved


def _tdvp(rank: int | None, cv: bool, out: Path, space: str = "auto") -> None:
    """A TDVP right-hand side on this rank's share of 600 fixed states, explored states
    added (rank None: all), solved in `space`; each rank writes what it got."""
    net = _network().compile("cpu", torch.float64)
    model = build_model("nade", _network(), hidden=8, seed=3)
    states, _ = model.sample(600, torch.Generator().manual_seed(1))
    if rank is not None:
        states = states[rank :: parallel.world_size()]
    solver = FisherSolver(cv=cv, space=space)
    rhs = TDVPRightHandSide(net, proposal=_Fixed(states), batch_size=states.shape[0], solver=solver)
    seed = 5 + (rank or 0)  # the ranks' own streams: the explored states differ
    rhs.explore = 0.0 if not cv else 0.1
    got = rhs(model, 0.1, torch.Generator().manual_seed(seed), 0.01, need_grads=True)
    norm = got.fisher_norm(torch.ones_like(got.theta_dot))
    summary = (got.theta_dot, got.residual, got.ess, got.shift, got.states, norm)
    out.with_suffix(f".{rank or 0}.pkl").write_bytes(pickle.dumps(summary))


@pytest.mark.parametrize("space", ["sample", "parameter"])
def test_two_processes_take_the_one_process_tdvp_slope(tmp_path, space):
    """Sample space: every rank's states gathered to every rank; parameter space: each rank
    sums the system of its own states and the sums are added (FisherSolver.solve_reduced)."""
    _tdvp(None, False, tmp_path / "one", space)
    _spawn(_tdvp, 2, False, tmp_path / "two", space)
    one = pickle.loads((tmp_path / "one.0.pkl").read_bytes())
    shares = []
    for rank in (0, 1):
        two = pickle.loads((tmp_path / f"two.{rank}.pkl").read_bytes())
        torch.testing.assert_close(two[0], one[0], rtol=1e-8, atol=1e-10)  # theta_dot
        assert two[1] == pytest.approx(one[1], rel=1e-8)  # the residual
        assert two[2] == pytest.approx(one[2], rel=1e-12)  # the ESS of all draws
        assert two[3] == pytest.approx(one[3], rel=1e-10)  # the shift
        assert two[5] == pytest.approx(one[5], rel=1e-8)  # the Fisher norm
        shares.append(two[4])
        if space == "sample":
            assert torch.equal(two[4], one[4])  # the states of all ranks, in one order
    if space == "parameter":  # each rank kept its own states: together, all of them
        together = unique_states(torch.cat(shares), torch.tensor([24, 24]))[0]
        assert torch.equal(together, one[4]) and shares[0].shape[0] < one[4].shape[0]
    assert one[1] < 1.0 and float(one[0].abs().max()) > 0


def test_ranks_choose_one_cross_validated_shift(tmp_path):
    """With explored states of their own and folds drawn at random, the ranks still solve
    one system: the same slope, shift and states on both."""
    _spawn(_tdvp, 2, True, tmp_path / "cv")
    a, b = (pickle.loads((tmp_path / f"cv.{r}.pkl").read_bytes()) for r in (0, 1))
    assert torch.equal(a[0], b[0]) and a[1:4] == b[1:4] and torch.equal(a[4], b[4])


def test_the_batch_splits_over_ranks():
    assert parallel.batch_shares(1001) == [1001]  # one process
    assert parallel.world_size() == 1 and parallel.is_main() and not parallel.active()
    assert parallel.reduce([1.5], [2.0], [0.0]) == ([1.5], [2.0], [0.0])


def _heavy_tailed(n: int = 4000) -> torch.Tensor:
    """Squared relative changes of a law whose bulk reads 0.01, and one draw that reads 1,000
    times the bulk's whole sum (a state the model holds at a small share of its inflow)."""
    values = torch.from_numpy(np.random.default_rng(0).chisquare(1.0, n)) * 0.01
    values[1234] = 1000 * float(values.sum())
    return values


def test_the_median_of_means_reads_the_bulk_not_one_draw():
    values = _heavy_tailed()
    bulk = float(values[values < 1].mean())
    assert parallel.mean(values) > 100 * bulk  # the plain mean is the one draw's
    assert parallel.median_of_means(values, 8) == pytest.approx(bulk, rel=0.15)
    # without the outlier, the plain mean to within the groups' spread
    calm = values[values < 1]
    assert parallel.median_of_means(calm, 8) == pytest.approx(float(calm.mean()), rel=0.1)
    # fewer than two entries a group: the plain mean
    few = torch.tensor([1.0, 2.0, 30.0])
    assert parallel.median_of_means(few, 8) == pytest.approx(11.0)


def _median_of_means(rank: int, out: Path) -> None:
    values = _heavy_tailed()
    local = values[:2000] if rank == 0 else values[2000:]  # 2,000: a multiple of the groups
    got = parallel.median_of_means(local, 8)
    if rank == 0:
        (out / "mom.json").write_text(json.dumps(got))


def test_ranks_take_the_one_process_median_of_means(tmp_path):
    """Each rank deals its draws to the groups in turn: with 2,000 draws a rank the groups
    are those of one process dealing all 4,000 (bit for bit: the sums are the same)."""
    _spawn(_median_of_means, 2, tmp_path)
    got = json.loads((tmp_path / "mom.json").read_text())
    assert got == pytest.approx(parallel.median_of_means(_heavy_tailed(), 8), rel=1e-12)


# ------------------------------------------------------------------ whole runs
RUN = dict(batch=600, hidden=8, t_end=0.25, dt=DT, quiet=True, eval_samples=4000, save_every=DT)


def _runs(rank: int, out: Path) -> None:
    """Over two processes: refusals, a run, a run stopped at step 3, its resumption."""
    net = _network()
    messages = []
    for bad in ({"supervise": "moments"}, {"psis": True}):
        try:
            nncme.run(net, **{**RUN, **bad})
        except ConfigError as exc:
            messages.append(str(exc))
    full = nncme.run(net, out=str(out / "full"), **RUN)

    class Stop(Exception):
        pass

    def stop(info):
        if info.step == 3:
            raise Stop

    try:
        nncme.run(net, out=str(out / "cut"), callbacks=[stop], **RUN)
    except Stop:
        pass
    dist.barrier()
    resumed = nncme.run(net, out=str(out / "cut"), resume=True, **RUN)
    if rank == 0:
        same = all(
            torch.equal(a, b)
            for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values())
        )
        (out / "ranks.json").write_text(json.dumps({"messages": messages, "same": same}))


def test_a_run_over_two_processes_answers_as_one_and_resumes(tmp_path):
    _spawn(_runs, 2, tmp_path)
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    assert len(ranks["messages"]) == 2
    assert "supervision" in ranks["messages"][0] and "2 processes" in ranks["messages"][0]
    assert "Pareto" in ranks["messages"][1]
    assert ranks["same"], "the resumed run did not reach the uninterrupted run's parameters"
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["batch_per_rank"] == [300, 300]
    assert _worst_hellinger(tmp_path / "full") < 0.02
    # a resume with another number of processes is refused, naming both
    with pytest.raises(ConfigError, match="2 process"):
        nncme.run(_network(), out=str(tmp_path / "cut"), resume=True, **RUN)


def _poisson_birth_death() -> ReactionNetwork:
    """X made at 10 and degraded at 1: from Poisson(2), Poisson(10 - 8 e^-t) exactly."""
    return ReactionNetwork(
        {"X": 25},
        [Reaction({}, {"X": 1}, 10.0, "make"), Reaction({"X": 1}, {}, 1.0, "degrade")],
        {"X": 2},
        name="poisson-birth-death",
    )


SECOND_ORDER = {  # the settings of the one-process tests (test_optim.py, test_tdvp.py)
    "natgrad": dict(t_end=0.2, dt=0.02, save_every=0.1, batch=400, iterations=10),
    "tdvp": dict(proposal="alpha", alpha=0.5, t_end=0.4, dt=0.02, save_every=0.2, batch=500),
}


def _second_order_runs(rank: int, out: Path) -> None:
    """Natural-gradient and TDVP runs over two processes, scored against the exact law, and
    a TDVP step too long for one rank's states, which every rank must refuse."""
    net = _poisson_birth_death()
    start = Product.poisson([2.0], net.limits)
    errors = {}
    for name, settings in SECOND_ORDER.items():
        run = nncme.run(net, optimizer=name, quiet=True, eval_samples=1000, start=start,
                        **settings)  # fmt: skip
        lam = 10.0 - 8.0 * np.exp(-run.result.times)
        exact = np.stack([stats.poisson.pmf(np.arange(25), m) for m in lam])
        errors[name] = hellinger(exact, run.result.marginals[:, 0]).tolist()
    # rank 0 holds a state where dt a_0 = 0.05 * 24 > 1 (nothing is made at the limit),
    # rank 1 none (0.05 * 10): both raise
    states = torch.tensor([[24]] if rank == 0 else [[0]])
    rhs = TDVPRightHandSide(net.compile("cpu", torch.float64), proposal=_Fixed(states))
    model = build_model("nade", net, hidden=4, seed=0)
    try:
        rhs(model, 0.0, None, 0.05)
        refused = None
    except StepSizeError as exc:
        refused = str(exc)
    (out / f"second_order.{rank}.json").write_text(json.dumps([errors, refused]))


def test_natural_gradient_and_tdvp_run_over_two_processes(tmp_path):
    _spawn(_second_order_runs, 2, tmp_path)
    for rank in (0, 1):
        errors, refused = json.loads((tmp_path / f"second_order.{rank}.json").read_text())
        assert max(errors["natgrad"]) < 0.04, errors  # the one-process tests' bounds
        assert max(errors["tdvp"]) < 0.03, errors
        assert refused is not None
        assert ("dt * a_0(n) = 1.2" if rank == 0 else "another process") in refused, refused


# ------------------------------------------------------------------ amortised runs
AMORTISED = dict(hidden=8, contexts=8, per_context=16, exact_contexts=8, seed=1)
# a few iterations of each fit: the same work on one process and two
SHORT = dict(iterations=5, min_iterations=5, first_iterations=20)


def _fixed_draws(trainer: AmortisedTrainer, batch):
    """Uniform states of the box, the same for a context on any rank (seeded by its value)."""
    states = []
    for value in batch.values:
        g = torch.Generator().manual_seed(round(float(value[0]) * 1e6))
        r = torch.rand(trainer.config.per_context, trainer.net.limits.shape[0], generator=g)
        states.append((r * trainer.net.limits).long())
    states = torch.cat(states)
    code, totals = batch.select()
    return states, conditional_log_prob(trainer.model, states, code, totals, 1 << 15)


def _amortised_fit(rank: int | None, out: Path) -> None:
    """The first fits and one stage's fit of an amortised run on fixed draws (rank None: one
    process): each rank takes its share of the contexts."""
    AmortisedTrainer._sample = _fixed_draws  # this process's class (spawned or not)
    net = _network()
    config = AmortiseConfig(explore=0.0, mixture=0.0, **AMORTISED, **SHORT)
    trainer = AmortisedTrainer(net, ContextSpace(net, [Vary("make", 3.0, 9.0)]), config)
    reports = [trainer.fit_start(), trainer.exact_step(DT)["exact"]]
    stage = ConditionalStage([Term(frozen_copy(trainer.model), trainer.t, 1.0, 1.0)],
                             trainer.space, trainer.net, DT)  # fmt: skip
    reports.append(trainer.fit(stage))
    reports.append(trainer.motion(DT))
    if rank in (None, 0):
        params = [p.detach().clone() for p in trainer.model.parameters()]
        out.write_bytes(pickle.dumps((params, reports)))


def test_two_processes_make_the_one_process_amortised_fits(tmp_path):
    original = AmortisedTrainer._sample
    try:
        _amortised_fit(None, tmp_path / "one.pkl")
    finally:
        AmortisedTrainer._sample = original
    _spawn(_amortised_fit, 2, tmp_path / "two.pkl")
    one = pickle.loads((tmp_path / "one.pkl").read_bytes())
    two = pickle.loads((tmp_path / "two.pkl").read_bytes())
    for a, b in zip(one[0], two[0]):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
    first, exact, fit, motion = one[1]
    assert two[1][0].loss == pytest.approx(first.loss, rel=1e-9)
    assert two[1][1]["loss"] == pytest.approx(exact["loss"], rel=1e-9, abs=1e-12)  # its KL
    assert two[1][2].loss == pytest.approx(fit.loss, rel=1e-9)
    assert two[1][2].residual == pytest.approx(fit.residual, rel=1e-9)
    assert two[1][3] == pytest.approx(motion, rel=1e-9)
    assert first.iterations == 20 and fit.iterations == 5  # every fit ran: the same work


def _amortised_runs(rank: int, out: Path) -> None:
    """A whole amortised run over two processes, one stopped in its second step, resumed."""
    net = _network()
    varies = [Vary("make", 3.0, 9.0)]
    config = AmortiseConfig(t_end=0.15, dt=DT, saves=3, **AMORTISED)
    amortise(net, varies, out / "whole", config, progress=False)
    step, calls = AmortisedTrainer.step, {"n": 0}

    def interrupted(self, dt):  # the first step is exact: call 2 is 0.1 -> 0.15
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return step(self, dt)

    AmortisedTrainer.step = interrupted
    try:
        amortise(net, varies, out / "cut", config, progress=False)
    except KeyboardInterrupt:
        pass
    AmortisedTrainer.step = step
    dist.barrier()
    amortise(net, varies, out / "cut", config, resume=True, progress=False)
    try:  # fewer contexts than processes
        amortise(net, varies, out / "few", dataclasses.replace(config, contexts=1))
    except ValueError as exc:
        if rank == 0:
            (out / "few.txt").write_text(str(exc))


def test_an_amortised_run_over_two_processes_resumes_to_the_same_model(tmp_path):
    _spawn(_amortised_runs, 2, tmp_path)
    whole = torch.load(tmp_path / "whole" / "state.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "state.pt", weights_only=False)
    assert len(whole["generators"]) == 2 and whole["t"] == pytest.approx(0.15)
    for k in whole["model"]:
        torch.testing.assert_close(cut["model"][k], whole["model"][k], rtol=0, atol=0)
    meta = json.loads((tmp_path / "whole" / "amortise.json").read_text())
    assert meta["processes"] == 2 and meta["status"] == "completed"
    answer = AmortisedSolution(tmp_path / "whole")  # one process: 0.013 (2026-12-05)
    worst = 0.0
    for value in (3.5, 6.0, 8.5):
        exact = solve_fsp(answer.space.network_at([value]), times=answer.times)
        for k, t in enumerate(answer.times[1:], 1):
            got = answer.marginals(np.array([[value]]), t)
            worst = max(worst, *(hellinger(got[i][0], exact.marginals[k, i]) for i in range(2)))
    assert worst < 0.03
    assert (
        "contexts (1) is smaller than the number of processes (2)"
        in (tmp_path / "few.txt").read_text()
    )
    with pytest.raises(ValueError, match="2 process"):  # a resume over one process
        amortise(_network(), [Vary("make", 3.0, 9.0)], tmp_path / "cut",
                 AmortiseConfig(t_end=0.15, dt=DT, saves=3, **AMORTISED), resume=True,
                 progress=False)  # fmt: skip


@pytest.mark.slow
def test_torchrun_runs_the_command(tmp_path):
    """`torchrun --nproc-per-node 2 -m nncme.cli run ...`: rank 0 alone prints and writes."""
    path = save_network(_network(), tmp_path / "net.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(_free_port()), "-m", "nncme.cli", "run", str(path)]
    command += ["--batch", "400", "--hidden", "8", "--t-end", "0.1", "--dt", "0.05"]
    command += ["--eval-samples", "2000", "--quiet", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("over 2 processes") == 1, done.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["batch_per_rank"] == [200, 200]
    assert _worst_hellinger(tmp_path / "out") < 0.02


def _worst_hellinger(directory: Path) -> float:
    """The largest Hellinger distance of a run's marginals from FSP's, over its save times."""
    result = Result.load(directory)
    exact = solve_fsp(_network(), times=result.times)
    return max(
        hellinger(result.marginals[j, i], exact.marginals[j, i])
        for j in range(1, len(result.times))
        for i in range(2)
    )
