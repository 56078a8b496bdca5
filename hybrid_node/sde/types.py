"""torchsde's ``types``: the type aliases of its signatures, for code that annotates with them."""

from collections.abc import Sequence
from typing import Any, Callable, Dict, Optional, Tuple, Union  # noqa: F401, UP035 (torchsde re-exports these)

import torch

Tensor = torch.Tensor
Tensors = Sequence[Tensor]
TensorOrTensors = Union[Tensor, Tensors]  # noqa: UP007 (a runtime alias, as torchsde's)

Scalar = Union[float, Tensor]  # noqa: UP007
Vector = Union[Sequence[float], Tensor]  # noqa: UP007

Module = torch.nn.Module
Modules = Sequence[Module]
ModuleOrModules = Union[Module, Modules]  # noqa: UP007

Size = torch.Size
Sizes = Sequence[Size]
