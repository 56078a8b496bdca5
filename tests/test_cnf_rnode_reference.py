"""RNODE's regularisers against the authors' code (cfinlay/ffjord-rnode, "How to train your neural
ODE", Finlay et al. 2020) with the same weights, inputs and Hutchinson probe: the integrands (kinetic
energy 0.5 mean f^2 and the Jacobian norm mean (eps^T df/dz)^2), their integrals at fixed steps, and
the adaptive solve that leaves the two integrals out of the step-size control."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from _ffjord_odenet import odenet_pair
from _reference_code import extract_tree, import_package, repository
from torch import nn

from hybrid_node.nn.cnf import CNF, CNFSolver, HutchinsonTrace, _AugmentedDynamics
from hybrid_node.nn.cnf_trace import sample_noise

pytestmark = [
    pytest.mark.usefixtures("one_thread", "float64_default"),
    # the reference calls torch.tensor(t) on a tensor t, which warns
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

#: RNODE's repository (a checkout or a bare git directory)
RNODE_REPO = repository("RNODE_REPO", "/work/.mirror/cfinlay+ffjord-rnode/repo")

#: data dimension: not 2, for which RNODE's ODEfunc outside training takes the exact trace
DIM = 3


@pytest.fixture
def rnode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """RNODE's lib/layers (ODEnet, ODEfunc, CNF) and its regularisers, imported as the package ``lib``
    from a copy in ``tmp_path`` (skip if absent)."""
    pytest.importorskip("torchdiffeq")  # lib/layers/cnf.py solves with it
    root = extract_tree(RNODE_REPO, "lib", tmp_path, "RNODE_REPO", "RNODE's repository")
    odefunc, cnf, regularization = import_package(
        root, "lib", ["layers.odefunc", "layers.cnf", "layers.wrappers.cnf_regularization"], monkeypatch
    )
    return types.SimpleNamespace(odefunc=odefunc, cnf=cnf, regularization=regularization)


def _rnode_cnf(rnode, net, probe: torch.Tensor, end_time: float, *, regularize: bool, **solver):
    """RNODE's CNF in training mode (the mode that integrates the regularisers) with our probe."""
    reg = rnode.regularization
    odefunc = rnode.odefunc.ODEfunc(net, divergence_fn="approximate")
    # RNODE's CNF draws its probes (a list, one per div_sample) in before_odeint(); hand it ours instead
    odefunc.before_odeint = lambda e=None: rnode.odefunc.ODEfunc.before_odeint(odefunc, [probe])
    fns = (reg.quadratic_cost, reg.jacobian_frobenius_regularization_fn) if regularize else None
    options = solver.pop("options", {})
    cnf = rnode.cnf.CNF(odefunc, T=end_time, regularization_fns=fns, **solver)
    cnf.solver_options = options
    return cnf.train(), odefunc


def _flow(field: nn.Module, end_time: float, solver: CNFSolver) -> CNF:
    return CNF(field, DIM, end_time=end_time, learn_end_time=False, trace=HutchinsonTrace("gaussian"), solver=solver)


def test_regulariser_integrands_match_rnode_with_the_same_probe(rnode):
    # At T = 1 our data-to-base dynamics in solver time s are RNODE's field at t = s; RNODE's integrands
    # are 0.5 mean_i f_i^2 and mean_i (eps^T df/dz)_i^2, ours the sums ||f||^2 and ||eps^T df/dz||^2.
    net, field = odenet_pair(rnode.odefunc.ODEnet, DIM, 1.0, ours_into_theirs=True)
    flow = _flow(field, 1.0, CNFSolver())
    x = torch.randn(6, DIM, generator=torch.Generator().manual_seed(1))
    probe = sample_noise("gaussian", x, torch.Generator().manual_seed(2))
    cnf, odefunc = _rnode_cnf(rnode, net, probe, 1.0, regularize=True)
    cnf.odefunc.before_odeint()
    dyn = _AugmentedDynamics(flow.blocks[0], reverse=True, estimator=flow.trace, regularize=True)
    dyn.noise = probe
    zero = x.new_zeros(x.shape[0])
    for s in (0.0, 0.3, 1.0):
        t = torch.tensor(s)
        theirs = cnf.odefunc(t, (x.clone(), x.new_zeros(x.shape[0], 1), zero.clone(), zero.clone()))
        dz, dlogp, kinetic, jacobian = theirs
        ours = dyn(t, (x, zero, zero, zero))
        # the same derivatives, summed in another order
        torch.testing.assert_close(ours[0], dz, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(ours[1], dlogp.view(-1), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(ours[2], 2 * DIM * kinetic, rtol=1e-13, atol=0)
        torch.testing.assert_close(ours[3], DIM * jacobian, rtol=1e-13, atol=0)
        assert bool((kinetic > 0).all() and (jacobian > 0).all())  # a non-trivial comparison


def test_regulariser_integrals_match_rnode_at_fixed_steps(rnode):
    # rk4 with 20 steps: RNODE steps h = 0.05 T in t, we step 0.05 in s = t / T, the same points. In
    # solver time our integrals are T int ||f||^2 dt and T int ||eps^T df/dz||^2 dt (module docstring):
    # 2 D T and D T times RNODE's.
    end_time = 0.8
    net, field = odenet_pair(rnode.odefunc.ODEnet, DIM, end_time, ours_into_theirs=True)
    x = torch.randn(6, DIM, generator=torch.Generator().manual_seed(3))
    probe = sample_noise("gaussian", x, torch.Generator().manual_seed(4))  # the draw our solve makes below
    cnf, _ = _rnode_cnf(
        rnode, net, probe, end_time, regularize=True, solver="rk4", options={"step_size": 0.05 * end_time}
    )
    z, logp, (kinetic, jacobian) = cnf(x, x.new_zeros(x.shape[0], 1))
    flow = _flow(field, end_time, CNFSolver(method="rk4", options={"step_size": 0.05}))
    res = flow.to_base(x, regularize=True, generator=torch.Generator().manual_seed(4))
    # the same steps of the same arithmetic: rounding of O(1) quantities only
    torch.testing.assert_close(res.z, z, rtol=0, atol=1e-13)
    torch.testing.assert_close(res.delta_logp, logp.view(-1), rtol=0, atol=1e-13)
    torch.testing.assert_close(res.kinetic, 2 * DIM * end_time * kinetic, rtol=1e-12, atol=0)
    torch.testing.assert_close(res.jacobian, DIM * end_time * jacobian, rtol=1e-12, atol=0)


def test_regularisers_left_out_of_the_error_norm_as_in_rnode(rnode):
    # RNODE solves its regularised state with tolerances of 1e20 on the two integrals, so the regularised
    # solve takes the steps of the unregularised one; CNFSolver(regularizers_in_error_norm=False) does
    # the same here. dopri5 at RNODE's default tolerance 1e-5 over T = 1.5, with weights scaled up so
    # that the flow needs a dozen steps or more.
    end_time, tol = 1.5, 1e-5
    net, field = odenet_pair(rnode.odefunc.ODEnet, DIM, end_time, ours_into_theirs=True)
    with torch.no_grad():
        for module in (net, field):
            for p in module.parameters():
                p.mul_(2.0)
    x = torch.randn(16, DIM, generator=torch.Generator().manual_seed(5))
    probe = sample_noise("gaussian", x, torch.Generator().manual_seed(6))

    def rnode_solve(regularize: bool):
        cnf, odefunc = _rnode_cnf(rnode, net, probe, end_time, regularize=regularize, atol=tol, rtol=tol)
        with torch.no_grad():
            out = cnf(x, x.new_zeros(x.shape[0], 1))
        return out, int(odefunc.num_evals())

    (z, logp, (kinetic, jacobian)), theirs_nfe = rnode_solve(True)
    _, theirs_plain_nfe = rnode_solve(False)
    assert theirs_nfe == theirs_plain_nfe  # the reference's own behaviour, which the option copies

    def ours(regularize: bool, in_norm: bool):
        flow = _flow(field, end_time, CNFSolver(rtol=tol, atol=tol, regularizers_in_error_norm=in_norm))
        with torch.no_grad():
            return flow.to_base(x, regularize=regularize, generator=torch.Generator().manual_seed(6))

    plain, controlled, left_out = ours(False, True), ours(True, True), ours(True, False)
    assert controlled.nfe > plain.nfe  # by default the integrals cost steps
    assert left_out.nfe == plain.nfe
    # the same steps: the regularised solve's z and log p are the unregularised solve's, bit for bit
    torch.testing.assert_close(left_out.z, plain.z, rtol=0, atol=0)
    torch.testing.assert_close(left_out.log_prob, plain.log_prob, rtol=0, atol=0)
    # against the reference's adaptive solve: two dopri5 solves at 1e-5 that pick their steps in
    # different time variables (both took 38 evaluations); their global errors over T = 1.5 stay within
    # 1e-4 (measured 1.5e-5 in z, 1.9e-5 in log p)
    torch.testing.assert_close(left_out.z, z, rtol=0, atol=1e-4)
    torch.testing.assert_close(left_out.delta_logp, logp.view(-1), rtol=0, atol=1e-4)
    # the integrals are not error-controlled on either side: they carry the error of the state's steps
    # (measured 2.4e-5 relative for the kinetic energy, 3.5e-4 for the Jacobian term; RNODE's own Jacobian
    # integral lies 3.7e-4 from a solve at 1e-11)
    torch.testing.assert_close(left_out.kinetic, 2 * DIM * end_time * kinetic, rtol=1e-3, atol=0)
    torch.testing.assert_close(left_out.jacobian, DIM * end_time * jacobian, rtol=1e-3, atol=0)


def test_regularizers_in_error_norm_is_checked():
    with pytest.raises(TypeError, match="regularizers_in_error_norm must be True or False"):
        CNFSolver(regularizers_in_error_norm="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"both options\['norm'\] and regularizers_in_error_norm=False"):
        CNFSolver(options={"norm": lambda parts: parts[0].abs().max()}, regularizers_in_error_norm=False)
    with pytest.raises(ValueError, match="'scipy_solver' chooses its steps with an error norm that cannot be set"):
        CNFSolver(method="scipy_solver", regularizers_in_error_norm=False)
    # a fixed-step method measures no error: nothing to leave out, nothing to refuse
    CNFSolver(method="rk4", options={"step_size": 0.1}, regularizers_in_error_norm=False)
