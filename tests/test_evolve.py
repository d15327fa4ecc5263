"""The trainer: the transition target against the exact one-step map, the exact first step,
accuracy against FSP with a small budget (and a control showing the bound catches a wrong
operator), conservation laws, checkpoints and resume, NaN and step-size failures, the log."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.api import build_driver
from nncme.config import ConfigError, RunConfig
from nncme.evolve import time_grid
from nncme.exact import FSP, FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.models import NADE, Delta, Product
from nncme.observers import CHECKPOINT
from nncme.optim import NonFiniteError, TransitionTarget, transition_support
from nncme.steppers import Heun

FAST = dict(quiet=True, eval_samples=2000)
# a small budget: at most 20 iterations per step
BUDGET = dict(batch=500, iterations=20, tolerance=1e-5, **FAST)


def birth_death(k: float = 10.0, limit: int = 30) -> ReactionNetwork:
    return ReactionNetwork(
        {"X": limit},
        [Reaction({}, {"X": 1}, k, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
        t_end=1.0,
        dt=0.01,
    )


def isomerisation() -> ReactionNetwork:
    """A <-> B with A + B = 6 conserved, plus a bimolecular channel A + B -> 2B."""
    return ReactionNetwork(
        {"A": 7, "B": 7},
        [
            Reaction({"A": 1}, {"B": 1}, 2.0),
            Reaction({"B": 1}, {"A": 1}, 1.0),
            Reaction({"A": 1, "B": 1}, {"B": 2}, 0.3),
        ],
        {"A": 6},
        t_end=1.0,
        dt=0.01,
    )


def test_time_grid_hits_every_save_time():
    grid = time_grid(1.0, 0.3, [0.25, 0.6, 1.0])
    assert grid[0] == 0 and grid[-1] == 1.0
    for s in (0.25, 0.6, 1.0):
        assert np.any(grid == s)
    assert np.all(np.diff(grid) > 0) and np.max(np.diff(grid)) <= 0.3 + 1e-12


def test_transition_target_is_the_exact_one_step_map():
    net = isomerisation()
    compiled = net.compile("cpu", torch.float64)
    fsp = FSP(net, FSPSettings(quiet=True))
    states = torch.as_tensor(fsp.states)
    p = np.random.default_rng(0).random(len(states))
    p /= p.sum()
    log_p = torch.log(torch.as_tensor(p))

    class Table:  # a distribution given by a table over the FSP states
        num_species, max_count = 2, 7

        def log_prob(self, s):
            key = {tuple(x): i for i, x in enumerate(fsp.states.tolist())}
            return torch.tensor([log_p[key[tuple(x)]] if tuple(x) in key else -math.inf
                                 for x in s.tolist()], dtype=torch.float64)  # fmt: skip

    dt = 0.02
    values = TransitionTarget(Table(), compiled, 0.0, dt)(states)
    exact = p + dt * (fsp._w_const @ p)
    np.testing.assert_allclose(np.exp(values.log_tq.numpy()), exact, rtol=1e-12, atol=1e-15)


def test_first_step_from_a_point_mass_is_exact():
    net = birth_death()
    compiled = net.compile("cpu", torch.float64)
    states, log_tp = transition_support(Delta([3], net.limits), compiled, 0.0, 0.01, max_states=100)
    # T delta_3 = (1 - dt a_0(3)) at 3, dt * 10 at 4, dt * 3 at 2
    got = dict(zip(states[:, 0].tolist(), torch.exp(log_tp).tolist()))
    assert got == pytest.approx({2: 0.03, 3: 1 - 0.13, 4: 0.1}, abs=1e-12)
    cfg = RunConfig(t_end=0.01, dt=0.01, save_every=0.01, integrator="euler", **FAST)
    q = nncme.run(net, cfg).result.marginals[-1, 0]
    assert hellinger(q, np.eye(30)[0] * 0.9 + np.eye(30)[1] * 0.1) < 0.01


def test_first_step_takes_the_runs_own_scheme_exactly():
    """From a point mass, a Heun run's first step is Heun's map applied exactly, not Euler's:
    the model at t = dt is as close to the CME as Heun is, up to the fit's KL (H <= sqrt(KL/2)).
    Euler's step misses the mass two births away, (k dt)^2 / 2, and fails the same bound."""
    net, dt = birth_death(), 0.01
    fsp = FSP(net, FSPSettings(quiet=True))
    W, p0 = fsp.generator(0.0), fsp.initial_distribution()
    euler = p0 + dt * (W @ p0)
    heun = 0.5 * p0 + 0.5 * (euler + dt * (W @ euler))
    compiled = net.compile("cpu", torch.float64)
    scheme = Heun.scheme
    states, log_u = transition_support(
        Delta([0], net.limits), compiled, 0.0, dt, max_states=100,
        stages=scheme.stages, times=scheme.times,
    )  # fmt: skip
    listed = np.zeros(fsp.num_states)
    listed[fsp.index(states.numpy())] = np.exp(log_u.numpy())
    np.testing.assert_allclose(listed, heun, rtol=1e-12, atol=1e-15)
    out = nncme.run(net, RunConfig(t_end=dt, dt=dt, save_every=dt, **FAST))
    exact = solve_fsp(net, [dt], FSPSettings(quiet=True)).marginals[-1, 0]
    bound = hellinger(heun, exact) + math.sqrt(out.history[0]["loss"] / 2)
    assert hellinger(out.result.marginals[-1, 0], exact) <= bound
    assert hellinger(euler, exact) > bound  # the Euler first step it replaces


def _from_poisson(model: str, k: float) -> tuple[np.ndarray, np.ndarray]:
    """A run of the birth-death process with birth rate k from Poisson(2) marginals, small
    budget; returns the Hellinger distances (T,) and relative mean errors (T,) to the exact
    solution of the k = 10 process."""
    net, run_net = birth_death(limit=25), birth_death(k=k, limit=25)
    start = Product.poisson([2.0], net.limits)
    cfg = RunConfig(model=model, t_end=0.4, dt=0.02, save_every=0.2, **BUDGET)
    result = nncme.run(run_net, cfg, start=start).result
    p0 = start.marginals()[0].numpy()
    exact = solve_fsp(net, result.times, FSPSettings(quiet=True), p0=p0)
    h = hellinger(exact.marginals, result.marginals)[:, 0]
    return h, np.abs(result.means[:, 0] / exact.means[:, 0] - 1)


def test_the_first_fit_leaves_no_floor_for_the_next_steps_to_grow():
    """mRNA and protein from none, in a box ten times wider than the counts: after eight
    steps the exact law has < 1e-12 beyond P = 10. From a first fit run to its cap the VAN
    has 4e-8..7e-8 there (two seeds); from one stopped at 1e-4 the next fits grow that mass
    to 1.5e-6..3e-6 (a floor over the box: on a wider one it lifted the protein's small mean
    by 10 %). Those are the drawn fits' (`enumerate_states=0`); at the defaults the 12,000
    states are summed (60 prefixes), and every fit is to the CME's own solution on them in
    log space: no floor at all."""
    net = ReactionNetwork(
        {"M": 60, "P": 200},
        [
            Reaction({}, {"M": 1}, 3.0),
            Reaction({"M": 1}, {}, 0.3),
            Reaction({"M": 1}, {"M": 1, "P": 1}, 0.8),
            Reaction({"P": 1}, {}, 0.1),
        ],
        {},
        t_end=0.08,
        dt=0.01,
    )
    exact = solve_fsp(net, [0.0, 0.08], FSPSettings(quiet=True)).marginals[1, 1]
    assert exact[11:].sum() < 1e-12
    grid = torch.cartesian_prod(torch.arange(60), torch.arange(200))
    far = {}
    for tolerance in (1e-9, 1e-4, None):
        drawn = {"enumerate_states": 0, "first_tolerance": tolerance} if tolerance else {}
        cfg = RunConfig(t_end=0.08, save_every=0.08, seed=0, quiet=True, **drawn)
        q = torch.exp(nncme.run(net, cfg).model.log_prob(grid).detach()).reshape(60, 200)
        far[tolerance] = float(q[:, 11:].sum())
    assert far[1e-9] < 5e-7 < far[1e-4]
    assert far[None] < 1e-10


@pytest.mark.parametrize("model", ["nade", pytest.param("transformer", marks=pytest.mark.slow)])
def test_birth_death_tracks_the_exact_solution(model):
    h, mean_err = _from_poisson(model, 10.0)
    assert h.max() < 0.06 and mean_err.max() < 0.05, (h, mean_err)


def test_the_accuracy_bound_catches_a_wrong_operator():
    """Trained on a birth rate 30% off, the same budget fails the bound above."""
    h, mean_err = _from_poisson("nade", 13.0)
    assert h.max() > 0.1 and mean_err.max() > 0.1


def test_conservation_law_is_honoured_and_tracked():
    net = isomerisation()
    cfg = RunConfig(t_end=0.4, dt=0.01, save_every=0.2, **BUDGET)
    out = nncme.run(net, cfg)
    s, _ = out.model.sample(2000, torch.Generator().manual_seed(0))
    assert torch.all(s.sum(1) == 6)  # A + B = 6 exactly, always
    exact = solve_fsp(net, out.result.times, FSPSettings(quiet=True))
    assert hellinger(exact.marginals, out.result.marginals).max() < 0.08
    # joint stored (small box) and normalised on the law's states
    joint = out.result.joint[-1]
    assert abs(joint.sum() - 1) < 1e-9
    off = out.result.joint_states.sum(1) != 6
    assert joint[off].max() == 0


def test_product_and_model_starts():
    net = birth_death(limit=25)
    start = Product.poisson([2.0], net.limits)
    cfg = RunConfig(t_end=0.1, dt=0.01, save_every=0.1, **BUDGET)
    out = nncme.run(net, cfg, start=start)
    np.testing.assert_allclose(out.result.marginals[0, 0], start.marginals()[0].numpy())
    again = nncme.run(net, cfg.replace(t_end=0.05, save_every=0.05), start=out.model)
    assert again.result.times[-1] == pytest.approx(0.05)
    np.testing.assert_allclose(
        again.result.marginals[0], out.result.marginals[-1], atol=1e-12
    )  # t = 0 of the second run is the trained model itself


def _run(tmp, callbacks=(), resume=False, **kw):
    """A run of steps of dt (max_dt 0: the exponential steps would grow past the steps the
    tests stop at)."""
    cfg = RunConfig(
        t_end=0.1, dt=0.01, save_every=0.03, batch=200, iterations=3, tolerance=0,
        out=str(tmp), resume=resume, **{"max_dt": 0.0, **FAST, **kw},
    )  # fmt: skip
    return nncme.run(birth_death(limit=20), cfg, callbacks=callbacks)


@pytest.mark.parametrize("integrator", ["auto", "implicit"])
def test_resume_after_a_kill_gives_the_same_parameters(tmp_path, integrator):
    """Also with implicit steps: BDF2's history of laws is in the checkpoint."""
    full = _run(tmp_path / "full", integrator=integrator)

    class Killed(Exception):
        pass

    def kill(info):
        if info.step == 7:
            raise Killed

    with pytest.raises(Killed):
        _run(tmp_path / "killed", callbacks=[kill], integrator=integrator)
    state = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert state["step"] == 6  # saved at t = 0.06, the last save before the kill
    resumed = _run(tmp_path / "killed", resume=True, integrator=integrator)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    np.testing.assert_array_equal(full.result.marginals, resumed.result.marginals)
    log = [json.loads(x) for x in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 11))
    if integrator != "auto":
        return
    with pytest.raises(ConfigError, match="lr: "):
        _run(tmp_path / "killed", resume=True, lr=0.5)
    # a checkpoint saved before a setting existed names it as such
    state = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    del state["settings"]["max_motion"]
    torch.save(state, tmp_path / "killed" / CHECKPOINT)
    with pytest.raises(ConfigError, match="max_motion: not in the checkpoint"):
        _run(tmp_path / "killed", resume=True)


def test_nan_stops_the_run_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    def poison(info):
        if info.step == 8:
            with torch.no_grad():
                info.model.head_b.fill_(math.nan)

    with pytest.raises(NonFiniteError, match=r"step 9 \(t = 0\.08") as err:
        _run(tmp_path, callbacks=[poison])
    assert "last good checkpoint" in str(err.value)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 6 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_outputs_written(tmp_path):
    out = _run(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"results.npz", "summary.json", "log.jsonl", CHECKPOINT, "marginals.png"} <= names
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == "van" and summary["settings"]["batch"] == 200
    assert out.result.times.tolist() == pytest.approx([0, 0.03, 0.06, 0.09, 0.1])
    line = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert {"step", "t", "loss", "iterations", "rate_dt", "seconds"} <= set(line)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="batch"):
        RunConfig(batch=0)
    with pytest.raises(ConfigError, match="model: must be one of"):
        RunConfig(model="rnn")
    with pytest.raises(ConfigError, match="did you mean 'batch'"):
        RunConfig.from_dict({"bach": 3})
    f = tmp_path / "run.toml"
    f.write_text("[run]\nbatch = 64\ndt = 0.02\ntimes = [0.1, 0.3]\n")
    cfg = RunConfig.from_toml(f, lr=0.5)
    assert (cfg.batch, cfg.dt, cfg.times, cfg.lr) == (64, 0.02, [0.1, 0.3], 0.5)
    assert cfg.save_times(0.5) == [0.1, 0.3, 0.5]
    with pytest.raises(ConfigError, match="resume: needs out"):
        RunConfig(resume=True)
    with pytest.raises(ConfigError, match=r"adaptive_dt: .* tdvp"):
        RunConfig(adaptive_dt=True)
    assert isinstance(build_driver(birth_death(), RunConfig(quiet=True)).model, NADE)
