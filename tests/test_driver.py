"""The driver and its observers: stepping by hand equals `run`, a callback that returns False
stops the run with its results written, observers hear every hook in order, and the
statistics from a VAN's samples (through its conditionals) agree with its exact joint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nncme
from nncme import Reaction, ReactionNetwork
from nncme.api import build_driver
from nncme.config import RunConfig
from nncme.evolve import DivergenceError, StepInfo
from nncme.models import build_model
from nncme.observers import Checkpoints, Observer, Recorder, StepLog, Watchdog, summarize
from nncme.optim import StepReport

# steps of dt (max_dt 0): these tests are of the driver's grid and hooks, not of growth
FAST = dict(quiet=True, eval_samples=2000, batch=200, iterations=3, tolerance=0, max_dt=0.0)


def dimerisation() -> ReactionNetwork:
    """0 -> A, 2A -> B, B -> 0 (second order, no law): a box of 20 x 10 states."""
    return ReactionNetwork(
        {"A": 20, "B": 10},
        [
            Reaction({}, {"A": 1}, 4.0, "birth"),
            Reaction({"A": 2}, {"B": 1}, 0.1, "dimerise"),
            Reaction({"B": 1}, {}, 1.0, "decay"),
        ],
        {"A": 2},
        t_end=0.1,
        dt=0.01,
    )


def test_stepping_by_hand_is_the_run():
    cfg = RunConfig(t_end=0.05, dt=0.01, save_every=0.02, **FAST)
    whole = nncme.run(dimerisation(), cfg)
    driver = build_driver(dimerisation(), cfg)
    infos = []
    while not driver.done:
        infos.append(driver.step())
    assert [i.step for i in infos] == [1, 2, 3, 4, 5]
    assert [i.t for i in infos] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    for name, p in whole.model.state_dict().items():
        assert torch.equal(p, driver.model.state_dict()[name]), name
    np.testing.assert_array_equal(
        whole.result.marginals, driver.observer(Recorder).result().marginals
    )


def test_a_callback_returning_false_stops_and_the_results_so_far_are_written(tmp_path):
    cfg = RunConfig(t_end=0.1, dt=0.01, save_every=0.03, out=str(tmp_path), **FAST)
    seen = []

    def stop_after_four(info):
        seen.append(info.step)
        return info.step < 4

    out = nncme.run(dimerisation(), cfg, callbacks=[stop_after_four, lambda info: None])
    assert seen == [1, 2, 3, 4]
    assert out.result.times.tolist() == pytest.approx([0.0, 0.03])  # t = 0 and one save
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["times"] == pytest.approx([0.0, 0.03])


class Spy(Observer):
    key = "spy"

    def __init__(self):
        self.calls = []

    def start(self, driver):
        self.calls.append(("start", driver.index))

    def step(self, driver, info):
        self.calls.append(("step", info.step))

    def save(self, driver, info):
        self.calls.append(("save", info.step))

    def finish(self, driver):
        self.calls.append(("finish", driver.index))

    def close(self, driver):
        self.calls.append(("close", driver.index))

    def state_dict(self):
        return {"calls": list(self.calls)}


def test_observers_hear_every_hook_in_order():
    driver = build_driver(dimerisation(), RunConfig(t_end=0.03, dt=0.01, save_every=0.02, **FAST))
    spy = Spy()
    driver.observers.append(spy)
    driver.run()
    assert spy.calls == [
        ("start", 0),
        ("step", 1),
        ("step", 2),
        ("save", 2),
        ("step", 3),
        ("save", 3),
        ("finish", 3),
        ("close", 3),
    ]
    assert len(driver.observer(StepLog).history) == 3
    with pytest.raises(KeyError, match="no Checkpoints"):
        driver.observer(Checkpoints)


def test_statistics_from_conditionals_match_the_exact_joint():
    """Marginals, means, stds, covariances and the pair joint of a trained-looking NADE from
    20,000 samples through its conditionals, against the same from its exact joint."""
    net = dimerisation()
    model = build_model("nade", net, hidden=6, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.7 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    gen = torch.Generator().manual_seed(0)
    exact = summarize(model, net, eval_samples=1, joint_max_states=10**6, generator=gen)
    sampled = summarize(model, net, eval_samples=20000, joint_max_states=0, generator=gen)
    assert "joint" in exact and "joint" not in sampled
    assert torch.allclose(sampled["marginals"], exact["marginals"], atol=0.01)
    assert torch.allclose(sampled["means"], exact["means"], rtol=0.02)
    assert torch.allclose(sampled["stds"], exact["stds"], rtol=0.03)
    # E[n_A c_B] - E[n_A] E[c_B] has a standard error of about 0.2 at 20,000 samples here
    assert torch.allclose(sampled["covariances"], exact["covariances"], atol=0.6)
    assert torch.allclose(sampled["pair"], exact["pair"], atol=0.01)
    assert float(exact["joint"].sum()) == pytest.approx(1.0)
    # the sampled estimate is not the exact one (it is an estimate), but close
    assert not torch.equal(sampled["marginals"], exact["marginals"])


def test_a_diverging_fit_stops_and_the_summary_says_failed(tmp_path):
    """Adam at lr 1e6 throws the model far off its target at the first regular step: the run
    stops there (before, it ran to the end with exit 0 and a wrong answer). Drawn fits: a
    sum over the whole support is fitted by L-BFGS, which takes no lr."""
    cfg = RunConfig(
        t_end=0.1, dt=0.01, save_every=0.01, lr=1e6, out=str(tmp_path), enumerate_states=0,
        **FAST,
    )  # fmt: skip
    with pytest.raises(DivergenceError, match=r"step 2 .*the fit diverged.*last good checkpoint"):
        nncme.run(dimerisation(), cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "diverged" in summary["error"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 1


def test_the_watchdog_warns_then_stops_a_run_that_keeps_going_wrong():
    """Steps whose residual jumps far above the run's median are warned; `patience` of them
    in a row stop the run."""
    dog = Watchdog(patience=3, warm_up=2)
    driver = build_driver(dimerisation(), RunConfig(t_end=0.1, dt=0.01, **FAST))

    def info(step, residual):
        report = StepReport(loss=0.0, residual=residual)
        return StepInfo(step, 0.01 * step, 0.01, report, driver.model, 0.0)

    for step in (1, 2):
        dog.step(driver, info(step, 1e-4))
    jump = info(3, 0.5)
    with pytest.warns(UserWarning, match="median"):
        dog.step(driver, jump)
    assert jump.report.warnings and dog.streak == 1
    with pytest.warns(UserWarning), pytest.raises(DivergenceError, match="3 steps in a row"):
        for step in (4, 5):
            dog.step(driver, info(step, 0.5))
    beyond = info(6, 1e-4)
    beyond.report.loss = 2.0  # a KL estimate beyond a nat: at once
    with pytest.raises(DivergenceError, match="diverged"):
        dog.step(driver, beyond)


def test_a_completed_run_says_so(tmp_path):
    cfg = RunConfig(t_end=0.02, dt=0.01, out=str(tmp_path), **FAST)
    nncme.run(dimerisation(), cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["warnings"] == 0


def test_a_first_step_too_large_to_list_starts_from_a_shorter_exact_step():
    """A point mass whose first step reaches more states than can be listed (forced here by
    a small listing budget on a 2x2 diffusion lattice): the exact step over dt / 4^j, the
    model fitted to it, then the run's stepper to t_1, its fits allowed REST_ITERATIONS times
    the run's iterations. Against the exact marginals."""
    from nncme import systems
    from nncme.exact import monomolecular_marginals
    from nncme.metrics import hellinger
    from nncme.steppers import REST_ITERATIONS

    net = systems.get(
        "reaction_diffusion", shape="2x2", kinetics="birth_death", x0=2, k=4, gamma=1, hopping=1
    )
    driver = build_driver(net, RunConfig(t_end=0.004, dt=0.002, batch=1000, quiet=True))
    driver.first.max_states = 300  # fewer than the whole step reaches
    stepper, allowed = driver.first.then, []
    take_step = stepper.step

    def step(t: float, dt: float):
        allowed.append(stepper.motion.update.iterations)
        return take_step(t, dt)

    stepper.step = step
    driver.run()
    schemes = [entry["scheme"] for entry in driver.observer(StepLog).history]
    assert schemes[0].startswith("exact to ") and schemes[0].endswith(", then heun"), schemes
    # the first step's rest fits longer than the later steps
    its = RunConfig().iterations
    assert allowed == [REST_ITERATIONS * its, its], allowed
    result = driver.observer(Recorder).result()
    exact = monomolecular_marginals(net, result.times)
    worst = hellinger(result.marginals[1:], exact[1:, :, : result.marginals.shape[-1]]).max()
    assert worst < 0.02, worst
