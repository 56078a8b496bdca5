"""The ODE solve used by the sequence models (one place to switch the solver implementation)."""
from torchdiffeq import odeint  # noqa: F401  (temporary: hybrid_node's own odeint is not in main yet)
