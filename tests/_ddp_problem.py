"""The tiny Neural ODE shared by tests/test_distributed.py and its torchrun worker."""

import torch
from torch import nn

import hybrid_node as hn

T = torch.linspace(0.0, 1.0, 4, dtype=torch.float64)

#: gradient method -> (solver, controller, sensitivity); tight tolerances so that the adaptive
#: solves on half batches and on the full batch agree to far below the test's tolerance
CASES = {
    "direct-rk4": (hn.RK4, lambda: hn.ConstantStepSize(step_size=0.05), hn.DirectBackprop),
    "direct-dopri5": (hn.Dopri5, lambda: hn.PIDController(rtol=1e-8, atol=1e-10), hn.DirectBackprop),
    "backsolve-dopri5": (hn.Dopri5, lambda: hn.PIDController(rtol=1e-8, atol=1e-10), hn.BacksolveAdjoint),
    "interpolating-dopri5": (hn.Dopri5, lambda: hn.PIDController(rtol=1e-8, atol=1e-10), hn.InterpolatingAdjoint),
    "backsolve-rk4": (hn.RK4, lambda: hn.ConstantStepSize(step_size=0.05), hn.BacksolveAdjoint),
    # binomial checkpointing recomputes the steps in its backward pass; reversible reconstructs them
    "checkpointed-rk4": (hn.RK4, lambda: hn.ConstantStepSize(step_size=0.05), lambda: hn.DirectBackprop(checkpoints=3)),
    "reversible-rk4": (
        lambda: hn.Reversible(hn.RK4()),
        lambda: hn.ConstantStepSize(step_size=0.05),
        hn.ReversibleAdjoint,
    ),
    # the same solve through an ODEBlock (its counting wrapper kept across passes, in each process)
    "block-backsolve-dopri5": (hn.Dopri5, lambda: hn.PIDController(rtol=1e-8, atol=1e-10), hn.BacksolveAdjoint),
}


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, t, y):
        return self.net(y)


class ODEModel(nn.Module):
    """y0 -> the states at T, solved with one of the CASES; the same weights for every instance."""

    def __init__(self, case: str):
        super().__init__()
        torch.manual_seed(0)
        self.func = Field().double()
        self.case = case
        if case.startswith("block-"):
            self.block = hn.nn.ODEBlock(
                self.func,
                T,
                train_settings=hn.nn.SolveSettings("dopri5", rtol=1e-8, atol=1e-10, sensitivity=CASES[case][2]()),
                return_trajectory=True,
            )

    def forward(self, y0):
        if self.case.startswith("block-"):
            return self.block(y0)
        solver, controller, sensitivity = CASES[self.case]
        sol = hn.solve(
            self.func,
            y0,
            T,
            solver=solver(),
            controller=controller(),
            sensitivity=sensitivity(),
            adjoint_params=tuple(self.func.parameters()),
        )
        return sol.ys


def batch():
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(8, 2, generator=g, dtype=torch.float64)
    targets = torch.randn(len(T), 8, 2, generator=g, dtype=torch.float64)
    return y0, targets
