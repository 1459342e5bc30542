"""Matricize operations: exact inverses (also for sizes not divisible by the window) and the
fast reconstruction and component maps they provide."""

import pytest
import torch

from LesionFactorizerLib.nn.matricize import make_matricize, roll3
from LesionFactorizerLib.nn.nmf import factorize

SIZES = [(8, 8, 8), (9, 10, 7), (5, 16, 3)]


@pytest.mark.parametrize("kind", ["global", "local", "swin"])
@pytest.mark.parametrize("size", SIZES)
def test_inverse_is_exact(kind, size):
    op = make_matricize(kind, head_dim=4, window=4)
    x = torch.randn(2, *size, 8)
    mats, layout = op.matricize(x)
    assert mats.shape[-2] == 4
    assert torch.equal(op.dematricize(mats, layout), x)


def test_local_windows_hold_the_expected_voxels():
    op = make_matricize("local", head_dim=2, window=2)
    x = torch.arange(4 * 4 * 4 * 2, dtype=torch.float32).reshape(1, 4, 4, 4, 2)
    mats, _ = op.matricize(x)
    # first window, only head: channels as rows, the 2×2×2 voxels of the corner as columns
    expected = x[0, :2, :2, :2, :].reshape(8, 2).T
    assert torch.equal(mats[0], expected)


def test_swin_second_partition_is_rolled_by_half_a_window():
    op = make_matricize("swin", head_dim=2, window=4)
    x = torch.randn(1, 8, 8, 8, 2)
    mats, _ = op.matricize(x)
    local = make_matricize("local", head_dim=2, window=4)
    rolled, _ = local.matricize(torch.roll(x, shifts=(2, 2, 2), dims=(1, 2, 3)))
    assert torch.equal(mats[mats.shape[0] // 2:], rolled)


@pytest.mark.parametrize("shift", [0, 1, 3, -2])
def test_roll3_matches_torch_roll(shift):
    x = torch.randn(2, 5, 6, 7, 3)
    assert torch.equal(roll3(x, shift), torch.roll(x, (shift,) * 3, dims=(1, 2, 3)))
    acc = torch.ones_like(x)
    roll3(x, shift, add_into=acc)
    assert torch.equal(acc, 1 + torch.roll(x, (shift,) * 3, dims=(1, 2, 3)))


@pytest.mark.parametrize("kind", ["global", "local", "swin"])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("grad", [False, True])
def test_reconstruct_equals_dematricized_product(kind, rank, grad):
    op = make_matricize(kind, head_dim=4, window=4)
    x = torch.rand(2, 9, 10, 7, 8)
    mats, layout = op.matricize(x)
    u, v = factorize(mats, rank, 3)
    expected = op.dematricize(u @ v.transpose(-1, -2), layout)
    with torch.set_grad_enabled(grad):
        got = op.reconstruct(u.requires_grad_(grad), v, layout)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind", ["global", "local", "swin"])
def test_factor_maps_land_on_the_input_grid(kind):
    op = make_matricize(kind, head_dim=2, window=4)
    x = torch.zeros(1, 6, 9, 5, 4)
    mats, layout = op.matricize(x)
    v = torch.zeros(mats.shape[0], mats.shape[-1], 1)
    maps = op.factor_maps(v, layout)
    assert maps.shape == (1, 2, 6, 9, 5)
    # a factor equal to the (de-matricised) data itself must map back to the data
    x = torch.rand(1, 6, 9, 5, 4)
    mats, layout = op.matricize(x)
    maps = op.factor_maps(mats[:, :1, :].transpose(-1, -2), layout)  # first row of each head
    torch.testing.assert_close(maps, x[..., ::2].permute(0, 4, 1, 2, 3))
