"""Toy 2-D data sets: shapes, determinism, scale, and the geometry each generator promises."""

import numpy as np
import pytest

from hybrid_node.data.toy2d import TOY2D_NAMES, sample_toy2d


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_shape_dtype_range_and_determinism(name):
    x = sample_toy2d(name, 2000, seed=3)
    assert x.shape == (2000, 2) and x.dtype == np.float32
    assert np.isfinite(x).all()
    # Documented scale: the data lie in about [-4, 4]^2 (a few noisy points may stray slightly).
    assert np.mean(np.abs(x) <= 4.5) > 0.99
    assert x.std() > 0.5  # not collapsed
    np.testing.assert_array_equal(x, sample_toy2d(name, 2000, seed=3))
    assert not np.array_equal(x, sample_toy2d(name, 2000, seed=4))


def test_two_circles_radii():
    r = np.linalg.norm(sample_toy2d("two_circles", 4000, seed=0), axis=1)
    # Two rings at radii 3 and 1.5 with noise 0.18: the radii split cleanly at 2.25.
    assert abs(np.median(r[r > 2.25]) - 3.0) < 0.05
    assert abs(np.median(r[r < 2.25]) - 1.5) < 0.05
    assert 0.45 < np.mean(r < 2.25) < 0.55


def test_rings_and_gaussians_geometry():
    r = np.linalg.norm(sample_toy2d("rings", 8000, seed=0), axis=1)
    radii = np.array([0.75, 1.5, 2.25, 3.0])
    nearest = radii[np.argmin(np.abs(r[:, None] - radii), axis=1)]
    assert np.abs(r - nearest).std() < 0.1  # noise 0.08 around one of the four radii
    x = sample_toy2d("8gaussians", 8000, seed=0)
    angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    counts = np.bincount(np.round(angle / (np.pi / 4)).astype(int) % 8, minlength=8)
    assert counts.min() > 800  # eight balanced modes


def test_checkerboard_only_black_cells():
    x = sample_toy2d("checkerboard", 4000, seed=0)
    cell = np.floor((x + 4.0) / 2.0).astype(int)
    assert ((cell >= 0) & (cell < 4)).all()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()


def test_rng_argument_advances():
    rng = np.random.default_rng(0)
    a = sample_toy2d("two_moons", 10, rng=rng)
    b = sample_toy2d("two_moons", 10, rng=rng)
    assert not np.array_equal(a, b)


def test_bad_input():
    with pytest.raises(ValueError, match="two_moons"):
        sample_toy2d("moons", 10)
    with pytest.raises(ValueError, match="positive"):
        sample_toy2d("two_moons", 0)
    with pytest.raises(TypeError):
        sample_toy2d("two_moons", 10.0)


def test_two_component_sets_are_ordered_as_documented():
    # The first n // 2 points lie on the outer circle (upper moon), the rest on the other component.
    r = np.linalg.norm(sample_toy2d("two_circles", 1001, seed=1), axis=1)
    assert (r[:500] > 2.25).all() and (r[500:] < 2.25).all()
    # The moons are 2 (cos a, sin a) - (1, 0.5) and 2 (1 - cos a, 0.5 - sin a) - (1, 0.5), a in [0, pi]:
    # undo the affine map and the noise-free point lies on the unit circle around (0, 0) or (1, 0.5).
    x = sample_toy2d("two_moons", 1001, seed=1) / 2.0 + np.array([0.5, 0.25])
    d_upper = np.abs(np.linalg.norm(x, axis=1) - 1)
    d_lower = np.abs(np.linalg.norm(x - np.array([1.0, 0.5]), axis=1) - 1)
    assert np.mean(d_upper[:500] < d_lower[:500]) > 0.95 and np.mean(d_lower[500:] < d_upper[500:]) > 0.95


@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_rng_must_be_a_generator(name):
    # Before, a RandomState worked for some sets and raised AttributeError ('integers') inside others.
    for bad in (np.random.RandomState(0), 0):
        with pytest.raises(TypeError, match="Generator"):
            sample_toy2d(name, 10, rng=bad)
