"""A training run whose weights a too large learning rate threw away ends with one line naming --lr,
instead of the solver's advice (an implicit method, jump_t) or, for the demo, hours of tiny steps."""

import pytest
import torch

import hybrid_node as hn
from hybrid_node.experiments import anode, spiral_demo
from hybrid_node.experiments._args import SettingsError, diverged_if_solve_fails


def _failing_solve():
    """A solve that really fails (y' = y^2 from 1 blows up at t = 1), as a diverged field's does."""
    hn.odeint(lambda t, y: y**2, torch.ones(1), torch.tensor([0.0, 2.0]))


def test_a_failed_solve_after_the_first_iteration_names_the_learning_rate():
    with pytest.raises(SettingsError, match=r"training diverged at iteration 7: .*lower --lr \(now 0\.5\)") as info:
        with diverged_if_solve_fails(7, 0.5):
            _failing_solve()
    assert isinstance(info.value.__cause__, hn.SolverError)


def test_a_failed_solve_at_the_first_iteration_is_passed_on():
    """The initial weights have not been moved by the learning rate: the solver's own error stands."""
    with pytest.raises(hn.SolverError):
        with diverged_if_solve_fails(1, 0.5):
            _failing_solve()


def test_anode_with_a_huge_learning_rate_reports_divergence():
    """It ended with "the step size fell below the minimum ... try an implicit method"."""
    with pytest.raises(SettingsError, match=r"training diverged at iteration \d+: .*lower --lr \(now 1000\)"):
        anode.train_flow("g1d", 0, iters=30, lr=1000.0, hidden=8)


def test_the_demo_solves_have_a_step_budget(monkeypatch):
    """With a too large lr the demo's dopri5 took tiny steps for odeint's default million per solve;
    the budget (made small here so the test is fast) ends it with the --lr message."""
    settings = spiral_demo.DemoSettings(iters=5, lr=1000.0, data_size=100, batch_time=5, batch_size=4)
    assert spiral_demo._solve_options(settings) == {"max_num_steps": spiral_demo.STEP_BUDGET}
    # scipy_solver counts its steps too (it stepped without a limit before)
    scipy = spiral_demo.DemoSettings(method="scipy_solver", adjoint=True)
    assert spiral_demo._solve_options(scipy) == {"max_num_steps": spiral_demo.STEP_BUDGET}
    monkeypatch.setattr(spiral_demo, "STEP_BUDGET", 200)
    with pytest.raises(SettingsError, match=r"training diverged at iteration \d+: .*maximum number of steps.*--lr"):
        spiral_demo.train(settings, progress=False)


def test_latent_sde_with_a_huge_learning_rate_reports_divergence():
    """The posterior SDE's state turned NaN mid-solve: a SolverError about the field, not --lr."""
    from hybrid_node.experiments import latent_sde

    settings = latent_sde.LatentSDESettings(iters=30, lr=1000.0)
    with pytest.raises(SettingsError, match=r"training diverged .*lower --lr \(now 1000\)"):
        latent_sde.train(settings, progress=False)


def test_hnn_rollout_of_a_diverged_model_names_the_learning_rate():
    """dopri5's step size underflowed on the learned field, with advice to use an implicit method."""
    import argparse

    from hybrid_node.experiments import hnn

    args = argparse.Namespace(
        trajectories=4, noise=0.1, seed=0, rollout_factor=1.0, hidden=16, iters=30, lr=1000.0, weight_decay=0.0,
        method="dopri5", step_size=0.02,
    )  # fmt: skip
    with pytest.raises(SettingsError, match=r"rollout failed at t=.*lower --lr \(now 1000\).*--method such as rk4"):
        hnn.run_task("spring", args, progress=False)
