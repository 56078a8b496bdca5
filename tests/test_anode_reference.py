"""The anode experiment against Dupont et al.'s code (github.com/EmilienDupont/augmented-neural-odes).

The reference's ``anode/models.py`` and ``anode/conv_models.py`` run with our weights: the same vector
field, the same augmentation (zeros appended after the features or channels), the same model output;
and the concentric-spheres radii are drawn from the distribution of its ``random_point_in_sphere``.
"""

import random
import sys
import types
from pathlib import Path

import pytest
import torch
from _reference_code import extract_tree, import_package, load_module, read_source, repository

from hybrid_node.experiments.anode import FlowModel, spheres_data
from hybrid_node.nn import AugmentedNeuralODE, SolveSettings

#: Dupont et al.'s repository (a checkout or a bare git directory), for its anode/ package
ANODE_REPO = repository("ANODE_REPO", "/work/.mirror/EmilienDupont+augmented-neural-odes/repo")
WHAT = "the augmented-neural-odes repository"


@pytest.fixture
def anode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """The reference's ``anode.models`` and ``anode.conv_models``, from a copy in ``tmp_path`` (skip if absent)."""
    pytest.importorskip("torchdiffeq")  # the reference's ODEBlock solves with it
    root = extract_tree(ANODE_REPO, "anode", tmp_path, "ANODE_REPO", WHAT)
    models, conv_models = import_package(root, "anode", ["models", "conv_models"], monkeypatch)
    return types.SimpleNamespace(models=models, conv_models=conv_models)


def _copy_weights(ours: FlowModel, ref) -> None:
    """The reference ODENet's weights into ``ours`` (fc1, fc2, fc3 of the field, then the linear readout)."""
    linears = [ref.odeblock.odefunc.fc1, ref.odeblock.odefunc.fc2, ref.odeblock.odefunc.fc3]
    assert len(ours.ode.block.func.linears) == len(linears)  # two hidden layers, as the reference's ODEFunc
    with torch.no_grad():
        for mine, theirs in zip(ours.ode.block.func.linears, linears):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        ours.readout.weight.copy_(ref.linear_layer.weight)
        ours.readout.bias.copy_(ref.linear_layer.bias)


@pytest.mark.parametrize("augment_dim", [0, 5])
def test_spheres_model_equals_the_reference_odenet(anode, augment_dim):
    torch.manual_seed(0)
    ref = anode.models.ODENet(torch.device("cpu"), data_dim=2, hidden_dim=32, augment_dim=augment_dim)
    ours = FlowModel(2, augment_dim, 32, "linear", 1e-3)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    _copy_weights(ours, ref)
    x = torch.randn(64, 2)
    h = torch.cat([x, torch.zeros(64, augment_dim)], 1)  # the reference's augmentation: zeros after x
    field = ours.ode.block.func
    # The same layers in the same order: equal up to rounding.
    torch.testing.assert_close(field(0.3, h), ref.odeblock.odefunc(torch.tensor(0.3), h), rtol=1e-6, atol=1e-6)
    # Both solved tightly (the reference's dopri5 steps past t = 1 and interpolates back, ours lands on it,
    # so at the experiment's 1e-3 they differ by up to the tolerance): the models agree to the solve error.
    ref.odeblock.tol = 1e-8
    ours.ode.block.train_settings = SolveSettings("dopri5", 1e-8, 1e-8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_image_augmentation_equals_the_reference_conv_odeblock(anode):
    # The reference's ConvODEFunc as our field: the augmented channels and the solve are what is compared.
    torch.manual_seed(0)
    func = anode.conv_models.ConvODEFunc(torch.device("cpu"), (1, 6, 6), 8, augment_dim=2, time_dependent=True)
    ref = anode.models.ODEBlock(torch.device("cpu"), func, is_conv=True, tol=1e-8)
    ours = AugmentedNeuralODE(func, 2, train_settings=SolveSettings("dopri5", 1e-8, 1e-8))
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        # tol 1e-8 on both sides: equal up to the solve error
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.fixture
def random_point_in_sphere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The reference's ``experiments/dataloaders.random_point_in_sphere`` (skip if absent)."""
    source = read_source(ANODE_REPO, "experiments/dataloaders.py", "ANODE_REPO", WHAT)
    # the module imports these for its image loaders, which are not used here
    for name in ("imageio", "torchvision"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    if not hasattr(sys.modules["torchvision"], "datasets"):
        monkeypatch.setattr(sys.modules["torchvision"], "datasets", None, raising=False)
        monkeypatch.setattr(sys.modules["torchvision"], "transforms", None, raising=False)
    path = tmp_path / "anode_dataloaders.py"
    path.write_text(source)
    return load_module(path, "anode_dataloaders").random_point_in_sphere


def test_spheres_radii_follow_the_reference_recipe(random_point_in_sphere):
    # The reference draws the radius as r0 + (r1 - r0) * U**(1/dim) (uniform in the inner ball). Ours drew
    # it uniform in [r0, r1]: half of the inner disc's points within r = 0.25 instead of a quarter.
    pytest.importorskip("scipy")
    from scipy.stats import ks_2samp, kstest

    random.seed(0)
    torch.manual_seed(0)
    for dim in (2, 3):
        x, _ = spheres_data(2000, 2000, dim=dim, seed=1)
        r = x.norm(dim=1).double()
        for ours, (r0, r1) in ((r[:2000], (0.0, 0.5)), (r[2000:], (1.0, 1.5))):
            theirs = torch.stack([random_point_in_sphere(dim, r0, r1) for _ in range(2000)]).norm(dim=1)
            assert ((theirs >= r0 - 1e-6) & (theirs <= r1 + 1e-6)).all()
            # the CDF of r0 + (r1 - r0) * U**(1/dim)
            cdf = lambda v, r0=r0, r1=r1, dim=dim: ((v - r0) / (r1 - r0)).clip(0, 1) ** dim
            # 2000 draws each: a KS p-value under 1e-3 means another distribution (seeded draws: not flaky);
            # the uniform radius of the old recipe scored p < 1e-30 on the inner disc
            assert kstest(ours.numpy(), cdf).pvalue > 1e-3, (dim, r0)
            assert ks_2samp(ours.numpy(), theirs.double().numpy()).pvalue > 1e-3, (dim, r0)
