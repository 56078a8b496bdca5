"""The torch backend's integration loops: host-driven, per-sample and device-resident stepping."""

from .dispatch import callbacks_called as callbacks_called
from .dispatch import integrate as integrate
from .dispatch import to_solution as to_solution
from .dispatch import warn_unsupported_callbacks as warn_unsupported_callbacks
