"""FFJORD-family toy fields (FFJORD's and RNODE's ``ODEnet``) paired with this library's ``TimeMLPField``.

Both projects carry data at t = 0 to the base at t = T; this library carries the base at t = 0 to data at
t = T (as torchdiffeq's example does), so their field runs backwards in ours: :class:`TimeReversed`.
"""

from __future__ import annotations

import torch
from torch import nn

from hybrid_node.nn.cnf_fields import TimeMLPField


class TimeReversed(nn.Module):
    """g(t, z) = -f(T - t, z): a data-to-base field as a base-to-data one."""

    def __init__(self, field: nn.Module, end_time: float):
        super().__init__()
        self.field, self.end_time = field, end_time

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -self.field(self.end_time - t, z)


def odenet_pair(odenet_class, dim: int, end_time: float, *, ours_into_theirs: bool = False):
    """The reference's toy ODEnet (concat layers, tanh, hidden 16-16) and our TimeMLPField with the same weights.

    Args:
        odenet_class: the reference's ``ODEnet``.
        dim: the data dimension.
        end_time: T, for :class:`TimeReversed`.
        ours_into_theirs: copy our random weights into the reference's net (RNODE's ODEnet zeroes its last
            layer, a flow that starts as the identity, which would leave the integrands trivial); by default
            the reference's weights are copied into ours.

    Returns:
        ``(net, TimeReversed(field, end_time))``.
    """
    torch.manual_seed(0)
    net = odenet_class(
        hidden_dims=(16, 16), input_shape=(dim,), strides=None, conv=False, layer_type="concat", nonlinearity="tanh"
    )
    field = TimeMLPField(dim, hidden=(16, 16), activation="tanh")
    with torch.no_grad():
        for theirs, ours in zip(net.layers, field.layers, strict=True):
            source, target = (ours, theirs._layer) if ours_into_theirs else (theirs._layer, ours)
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
    return net, TimeReversed(field, end_time)
