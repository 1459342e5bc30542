"""The NMF ablations of a Factorizer block, against the block's formula written out here.

Thesis 7.4.5 short-circuits an NMF layer as NMF(X) := X: the projections, the ReLU and the residual
stay (``set_nmf(skip=…)``). Dropping the whole Wrapped-NMF branch is a separate option
(``set_nmf(drop_branch=…)``)."""

import pytest
import torch
import torch.nn.functional as F

from LesionFactorizerLib import build_model
from LesionFactorizerLib.nn.factorizer import plain_forward

pytestmark = pytest.mark.slow

SMALL = dict(widths=(8, 16, 32, 64, 128), dropout=0.0)


def _block_by_hand(block, x, skip, nmf_branch):
    """One Factorizer block from its weights: adapter on cat([skip, x]), then
    ``x + nmf_branch(LN(x))`` and ``x + MLP(LN(x))``, all channels-last."""
    parts = [x] if skip is None else [skip, x]
    h = torch.cat(parts, 1).permute(0, 2, 3, 4, 1)
    if block.adapter is not None:
        h = h @ block.adapter.weight.T
    if nmf_branch is not None:
        wrapped = block.nmf
        n = F.layer_norm(h, h.shape[-1:], block.nmf_norm.weight, block.nmf_norm.bias)
        h = h + nmf_branch(torch.relu(n @ wrapped.in_proj.weight.T)) @ wrapped.out_proj.weight.T + wrapped.out_proj.bias
    n = F.layer_norm(h, h.shape[-1:], block.mlp_norm.weight, block.mlp_norm.bias)
    mlp = block.mlp
    h = h + F.gelu(n @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
    return h.permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize("memory_saving", [False, True])
@pytest.mark.parametrize("layer", ["encoder1", "decoder1"])
@pytest.mark.parametrize("ablation", ["skip", "drop_branch"])
def test_ablated_block_equals_its_formula(layer, memory_saving, ablation):
    torch.manual_seed(0)
    model = build_model("swin-factorizer-isles", **SMALL).eval().double()
    block = model.blocks[layer]
    width = block.nmf_norm.normalized_shape[0]
    x = torch.randn(1, width, 8, 8, 8, dtype=torch.float64)
    skip = torch.randn_like(x) if block.adapter is not None else None
    model.set_nmf(**{ablation: [layer]})
    identity = (lambda z: z) if ablation == "skip" else None   # NMF(X) := X, or no branch at all
    with torch.no_grad():
        if memory_saving:
            got = block(x, skip=skip)
        else:
            with plain_forward(model):
                got = block(x, skip=skip)
        expected = _block_by_hand(block, x, skip, identity)
        full = _block_by_hand(block, x, skip, lambda z: block.nmf.nmf(z))   # sanity: ablation changes it
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, full, atol=1e-6)


def test_skip_and_drop_branch_are_separate_reversible_selections():
    torch.manual_seed(0)
    model = build_model("swin-factorizer-isles", **SMALL).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        base = model(x)
        model.set_nmf(skip=["decoder1"])
        skipped = model(x)
        model.set_nmf(drop_branch=["decoder1"], skip=[])
        dropped = model(x)
        layers = model.nmf_layers()
        assert layers["decoder1"].drop_branch and not layers["decoder1"].skip
        model.set_nmf(drop_branch=[])
        torch.testing.assert_close(model(x), base)
    assert not torch.allclose(skipped, dropped) and not torch.allclose(skipped, base)
    with pytest.raises(ValueError, match="unknown NMF layer"):
        model.set_nmf(drop_branch=["decoder9"])


def test_skipped_layer_has_no_components():
    torch.manual_seed(0)
    model = build_model("swin-factorizer-isles", **SMALL).eval()
    model.set_nmf(skip=["bridge"])
    with torch.no_grad():
        _, comps = model.forward_with_components(torch.randn(1, 2, 16, 16, 16), layers=["bridge", "decoder1"])
    assert set(comps) == {"decoder1"}
