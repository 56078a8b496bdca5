"""The ODE solve used by the sequence models (one place that names the solver entry point)."""

from .._api import odeint

__all__ = ["odeint"]
