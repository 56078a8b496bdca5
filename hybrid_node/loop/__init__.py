"""The torch backend's integration loops: host-driven, per-sample and device-resident stepping."""

from .dispatch import integrate as integrate
from .dispatch import to_solution as to_solution
