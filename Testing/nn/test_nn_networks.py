"""Networks built from presets: exact reference parameter counts, shapes, inference/training
agreement, the component hook and the inference-time NMF knobs."""

import pytest
import torch
import torch.nn.functional as F

from LesionFactorizerLib import build_model
from LesionFactorizerLib.nn.factorizer import memory_saving_path
from LesionFactorizerLib.modelfile import load_model_file, make_metadata, save_model_file
from LesionFactorizerLib.nn.lowrank import InstanceNorm3d, LowRankConv3d
from LesionFactorizerLib.nn.monai_baselines import NETWORKS as MONAI_NETWORKS
from LesionFactorizerLib.presets import PRESETS, build_architecture, count_flops, count_parameters

# Counted on the authors' code (github.com/pashtari/factorizer at tag 0.0.1, and pashtari/xunet for the U-Nets).
REFERENCE_PARAMETERS = {
    "swin-factorizer-brats": 5_855_241,
    "local-factorizer-brats": 5_855_241,
    "global-factorizer-brats": 5_855_241,
    "swin-factorizer-isles": 7_371_523,
    "preunet-msseg2": 28_877_763,
    "unet-msseg2": 28_702_723,
    "resunet-msseg2": 28_876_803,
}
# Thesis chapter 8 reports 92.2 M and 20.8 M; the reading is documented in nn/lowrank.py.
THESIS_PARAMETERS_2PCT = {"resunet-brats2020": 92.2e6, "lowrank-resunet-brats2020": 20.8e6}

SMALL = dict(widths=(8, 16, 32, 64, 128))


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
@pytest.mark.slow
def test_parameter_counts_equal_the_reference(name):
    assert count_parameters(build_model(name)) == REFERENCE_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(THESIS_PARAMETERS_2PCT))
@pytest.mark.slow
def test_chapter8_parameter_counts_within_two_percent(name):
    n = count_parameters(build_model(name))
    assert abs(n - THESIS_PARAMETERS_2PCT[name]) / THESIS_PARAMETERS_2PCT[name] < 0.02


# The MONAI baselines run at tiny widths in test_training_baselines.py: at full size UNETR pads every
# input to its 128³ img_size, and nnU-Net's 6 stages need more than 32 voxels a side to train.
@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.architecture not in MONAI_NETWORKS])
@pytest.mark.slow
def test_every_preset_runs_forward_and_backward(name):
    model = build_model(name)
    cin, cout = model.config["kwargs"]["in_channels"], model.config["kwargs"]["out_channels"]
    n = 32 if name.endswith("brats2020") else 16  # InstanceNorm needs > 1 voxel at the bottom
    x = torch.randn(1, cin, n, n, n)
    outs = model(x, all_heads=True)
    assert outs[0].shape == (1, cout, n, n, n)
    for i, out in enumerate(outs):
        assert out.shape[2:] == (n // 2**i,) * 3
    sum(o.float().pow(2).mean() for o in outs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, cout, n, n, n)


def test_presets_can_be_retargeted_and_rebuilt_from_config():
    model = build_model("swin-factorizer-brats", in_channels=2, out_channels=1, **SMALL)
    assert model(torch.randn(1, 2, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
    again = build_architecture(**model.config)
    assert count_parameters(again) == count_parameters(model)
    again.load_state_dict(model.state_dict())  # same structure, same keys


@pytest.mark.parametrize("name", ["swin-factorizer-brats", "local-factorizer-brats", "global-factorizer-brats"])
@pytest.mark.slow
def test_odd_sizes_and_the_memory_saving_path_match_the_plain_forward(name):
    model = build_model(name, **SMALL).eval()
    blocks = list(model.blocks.values())
    x = torch.randn(2, 4, 21, 18, 35)
    with torch.no_grad():
        assert all(memory_saving_path(b) for b in blocks)  # eager inference takes it by default
        fast = model(x)
        for block in blocks:
            block.memory_saving = False
        assert not any(memory_saving_path(b) for b in blocks)
        plain = model(x)
    with torch.enable_grad():
        for block in blocks:
            block.memory_saving = True
        assert not any(memory_saving_path(b) for b in blocks)  # never under autograd
        autograd = model(x).detach()
    assert fast.shape == (2, 3, 21, 18, 35)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain, autograd, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_kept_buffers_never_leak_between_calls_threads_or_copies():
    """The workspace (reused full-size buffers) must not let one result overwrite another."""
    import copy
    from concurrent.futures import ThreadPoolExecutor

    model = build_model("swin-factorizer-brats", **SMALL).eval()
    xs = [torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        first = model(xs[0])
        seq = [model(x) for x in xs]                       # the same shape again and again
        torch.testing.assert_close(first, seq[0], rtol=0, atol=0)
        block = model.blocks["encoder1"]
        feat = torch.randn(1, 8, 16, 16, 16).contiguous(memory_format=torch.channels_last_3d)
        a = block(feat)
        b = block(feat * 2)                                # outside a network forward: fresh outputs
        assert a.data_ptr() != b.data_ptr() and not torch.equal(a, b)
        twin = copy.deepcopy(model)
        assert twin.blocks["encoder1"].workspace is not block.workspace
        assert twin.blocks["encoder1"].workspace is twin.blocks["decoder1"].workspace
        with ThreadPoolExecutor(4) as pool:                # concurrent forwards of one network
            threaded = list(pool.map(model, xs * 3))
    for got, want in zip(threaded, seq * 3):   # (threads round differently; sharing would not be 1e-5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_component_hook_returns_maps_on_each_layer_grid():
    model = build_model("swin-factorizer-isles", widths=(8, 16, 32, 64, 128)).eval()
    x = torch.randn(1, 2, 24, 20, 18)
    with torch.no_grad():
        logits, comps = model.forward_with_components(x)
        plain = model(x)
    torch.testing.assert_close(logits, plain, rtol=1e-4, atol=1e-4)
    names = [name for name, _ in model.component_layers]
    assert list(comps) == names
    assert names == ["encoder1", "encoder2", "encoder3", "encoder4", "bridge",
                     "decoder4", "decoder3", "decoder2", "decoder1"]
    for name, stride in model.component_layers:
        width = model.widths[names.index(name) if name.startswith("enc") else
                             {"bridge": 4, "decoder4": 3, "decoder3": 2, "decoder2": 1, "decoder1": 0}[name]]
        heads = width // 4
        grid = tuple(-(-n // stride) for n in x.shape[2:])
        assert comps[name].shape == (1, heads, *grid), name
        assert (comps[name] >= 0).all()
    # hooks are switched off again afterwards
    assert all(not layer.capture and layer.components is None for layer in model.nmf_layers().values())


def test_component_hook_can_select_layers():
    model = build_model("local-factorizer-brats", **SMALL).eval()
    with torch.no_grad():
        _, comps = model.forward_with_components(torch.randn(1, 4, 16, 16, 16), layers=["bridge", "decoder1"])
    assert set(comps) == {"bridge", "decoder1"}


def _flops(model, shape):
    return count_flops(model, shape)


@pytest.mark.slow
def test_skipping_layers_and_fewer_iterations_change_output_and_cost_less():
    torch.manual_seed(0)
    model = build_model("swin-factorizer-brats", **SMALL).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    shape = tuple(x.shape)
    with torch.no_grad():
        base, base_flops = model(x), _flops(model, shape)
        model.set_nmf(skip=["encoder1", "decoder1"])
        skipped, skipped_flops = model(x), _flops(model, shape)
        model.set_nmf(skip=[], iters=1)
        fewer, fewer_flops = model(x), _flops(model, shape)
        model.set_nmf(iters=5)
        torch.testing.assert_close(model(x), base)  # knobs are reversible: weights untouched
    assert not torch.allclose(skipped, base) and not torch.allclose(fewer, base)
    assert skipped_flops < base_flops and fewer_flops < base_flops


def test_rank_and_solver_can_change_at_inference():
    model = build_model("local-factorizer-brats", **SMALL).eval()
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        base = model(x)
        model.set_nmf(rank=2, solver="mu")
        other = model(x)
    assert torch.isfinite(other).all() and not torch.allclose(base, other)
    with pytest.raises(ValueError, match="unknown NMF layer"):
        model.set_nmf(skip=["encoder9"])


@pytest.mark.slow
def test_flops_of_thesis_models_are_close_to_the_thesis():
    swin = count_flops(build_model("swin-factorizer-brats"), (1, 4, 128, 128, 128)) / 1e9
    local = count_flops(build_model("local-factorizer-brats"), (1, 4, 128, 128, 128)) / 1e9
    assert abs(swin - 174.2) / 174.2 < 0.10 and abs(local - 170.0) / 170.0 < 0.10
    assert swin > local  # the shifted partition doubles the NMF work


def test_lowrank_conv_equals_conv_with_reconstructed_kernel():
    torch.manual_seed(0)
    layer = LowRankConv3d(6, 5, 3, alpha=0.5)
    assert layer.rank == 3
    x = torch.randn(2, 6, 7, 8, 9)
    kernel = torch.einsum("or,ir,hr,wr,dr->oihwd", layer.u_out, layer.u_in, layer.u_h, layer.u_w, layer.u_d)
    torch.testing.assert_close(layer(x), F.conv3d(x, kernel, layer.bias, padding=1))
    conv = torch.nn.Conv3d(6, 5, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(layer.kernel())
        conv.bias.copy_(layer.bias)
    torch.testing.assert_close(layer(x), conv(x))
    n_params = sum(p.numel() for p in layer.parameters())
    assert n_params == 3 * (5 + 6 + 3 + 3 + 3) + 5 < sum(p.numel() for p in conv.parameters())


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_lowrank_conv_run_as_cp_factors_equals_the_dense_kernel(kernel_size, layout):
    torch.manual_seed(1)
    layer = LowRankConv3d(6, 7, kernel_size, rank=4)
    x = torch.randn(2, 6, 5, 9, 8).contiguous(memory_format=layout)  # small: every voxel sees the border
    with torch.no_grad():
        factored = layer(x)
        dense = F.conv3d(x, layer.kernel(), layer.bias, padding=kernel_size // 2)
        layer.factored = False
        assert torch.equal(layer(x), dense)
    torch.testing.assert_close(factored, dense, rtol=1e-5, atol=1e-5)


def test_lowrank_resunet_inference_equals_its_dense_kernel_network():
    torch.manual_seed(2)
    model = build_model("lowrank-resunet-brats2020", features=4, levels=3).eval()
    x = torch.randn(1, 4, 12, 16, 20)
    with torch.no_grad():
        factored = model(x)
        for layer in model.modules():
            if isinstance(layer, LowRankConv3d):
                layer.factored = False
        dense = model(x)
    torch.testing.assert_close(factored, dense, rtol=1e-4, atol=1e-4)


def test_instance_norm_keeps_channels_last_at_inference_with_the_same_values():
    x = torch.randn(1, 6, 9, 10, 11).mul_(3).add_(2).contiguous(memory_format=torch.channels_last_3d)
    ours, reference = InstanceNorm3d(6), torch.nn.InstanceNorm3d(6)
    with torch.no_grad():
        fast = ours(x)
        assert fast.is_contiguous(memory_format=torch.channels_last_3d)
        torch.testing.assert_close(fast, reference(x), rtol=1e-5, atol=1e-5)
        two = torch.cat([x, 2 * x + 5]).contiguous(memory_format=torch.channels_last_3d)  # per sample, not per batch
        torch.testing.assert_close(ours(two), reference(two), rtol=1e-5, atol=1e-5)
    assert list(ours.state_dict()) == list(reference.state_dict()) == []   # model files unchanged


@pytest.mark.parametrize("name", ["resunet-brats2020", "lowrank-resunet-brats2020"])
def test_resunet_channels_last_inference_equals_the_training_graph_and_still_saves(name, tmp_path):
    torch.manual_seed(3)
    model = build_model(name, features=4, levels=3).eval()
    for layer in model.modules():
        if isinstance(layer, LowRankConv3d):
            layer.factored = False   # the same kernels both ways: only layouts differ
    x = torch.randn(1, 4, 12, 16, 20)
    trained_graph = model(x).detach()          # autograd on: contiguous weights, PyTorch's instance norm
    with torch.no_grad():
        fast = model(x)
    assert all(layer.weight.is_contiguous(memory_format=torch.channels_last_3d) for layer in model.modules()
               if isinstance(layer, torch.nn.Conv3d) and layer.kernel_size == (3, 3, 3))
    torch.testing.assert_close(fast, trained_graph, rtol=1e-4, atol=1e-4)
    path = tmp_path / "m.safetensors"
    save_model_file(path, model, make_metadata("tumor", model.config, name="t", patch_size=(16, 16, 16),
                                               spacing=(1.0, 1.0, 1.0)))
    with torch.no_grad():
        torch.testing.assert_close(load_model_file(path).model(x), fast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["swin-factorizer-isles", "local-factorizer-brats", "global-factorizer-brats"])
@pytest.mark.slow
def test_component_maps_agree_between_inference_and_autograd_paths(name):
    model = build_model(name, widths=(8, 16, 32, 64, 128)).eval()
    x = torch.randn(1, model.config["kwargs"]["in_channels"], 20, 17, 24)
    with torch.no_grad():
        _, fast = model.forward_with_components(x)
    _, plain = model.forward_with_components(x)
    assert list(fast) == list(plain)
    for layer in fast:
        torch.testing.assert_close(fast[layer], plain[layer], rtol=1e-4, atol=1e-5)
