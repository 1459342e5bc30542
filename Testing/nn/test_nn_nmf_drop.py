"""Dropping one NMF component: the reconstruction without it, the same in every forward path."""

import pytest
import torch

from LesionFactorizerLib import build_model
from LesionFactorizerLib.nn.factorizer import plain_forward
from LesionFactorizerLib.nn.matricize import make_matricize
from LesionFactorizerLib.nn.nmf import NMF
from LesionFactorizerLib.pipeline.counterfactual import dropped
from LesionFactorizerLib.pipeline.groups import component_count

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("rank", [1, 2])
def test_drop_leaves_out_exactly_that_component(rank):
    heads, head_dim = 3, 4
    z = torch.rand(2, 8, 8, 8, heads * head_dim, dtype=torch.float64)   # channels-last map
    nmf = NMF(rank=rank, iters=4)
    mat = make_matricize("local", head_dim, 4)
    mats, lay = mat.matricize(z)
    u, v = nmf.decompose(mats)
    maps = mat.factor_maps(v, lay)                      # (B, heads·R, D, H, W): the numbering users see
    for component in range(heads * rank):
        head, col = divmod(component, rank)
        nmf.drop = (heads, component)
        ud, vd = nmf.decompose(mats)
        nmf.drop = None
        torch.testing.assert_close(vd, v)                # the factors (and maps) are unchanged
        full = u @ v.transpose(-1, -2)
        without = ud @ vd.transpose(-1, -2)
        # the removed part is that head's rank-1 term, on that head's matrices only
        term = torch.zeros_like(full)
        term[head::heads] = u[head::heads, :, col:col + 1] @ v[head::heads, :, col:col + 1].transpose(-1, -2)
        torch.testing.assert_close(full - without, term)
        # and the component's spatial factor is the map numbered `component`
        one = torch.zeros_like(v)
        one[head::heads, :, col] = v[head::heads, :, col]
        torch.testing.assert_close(mat.factor_maps(one, lay)[:, component], maps[:, component])


@pytest.mark.parametrize("name", ["swin-factorizer-isles", "global-factorizer-brats"])
def test_dropping_changes_the_output_the_same_way_in_both_forward_paths(name):
    torch.manual_seed(0)
    model = build_model(name, widths=(8, 16, 32, 64, 128)).eval()
    x = torch.randn(1, _in_channels(model), 16, 16, 16)
    with torch.no_grad():
        base = model(x)
        count = component_count(model, "decoder1")
        assert count == 8 // model.config["kwargs"].get("head_dim", 8)
        with pytest.raises(ValueError, match="components 0 to"):
            with dropped(model, "decoder1", count):
                pass
        with dropped(model, "decoder1", count - 1):
            fast = model(x)
            with plain_forward(model):
                plain = model(x)
        again = model(x)
    assert model.nmf_layers()["decoder1"].nmf.drop is None   # switched off after the block
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert (fast - base).abs().max() > 1e-3
    torch.testing.assert_close(again, base)


def _in_channels(model) -> int:
    return int(model.config["kwargs"]["in_channels"])
