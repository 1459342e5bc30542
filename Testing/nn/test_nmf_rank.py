"""Choosing the NMF rank (thesis 5.4): the Kneedle elbow of the error-vs-rank curve finds the true
rank of noisy low-rank matrices, through the library and the real ``nmf-rank`` command."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import main_in_process
import torch

pytest.importorskip("kneed")

from LesionFactorizerLib.nn.rank_choice import error_curve, kneedle_elbow  # noqa: E402


def _noisy_low_rank(rank, seed, shape=(30, 60), noise=0.02):
    """Non-negative factors with well-separated columns (cubed uniforms), plus 2 % uniform noise."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape[0], rank, generator=gen, dtype=torch.float64) ** 3
    v = torch.rand(shape[1], rank, generator=gen, dtype=torch.float64) ** 3
    x = u @ v.T
    return x + noise * x.mean() * torch.rand(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("rank", [3, 5, 10])
@pytest.mark.slow
def test_kneedle_elbow_is_the_true_rank_of_a_noisy_low_rank_matrix(rank):
    x = _noisy_low_rank(rank, seed=rank)
    ranks = list(range(1, rank + 6))
    errors = error_curve(x, ranks, iters=100)
    assert all(b <= a for a, b in zip(errors, errors[1:]))   # never rises with the rank
    assert errors[rank - 1] < 0.1 * errors[0]                # the true rank explains the matrix
    assert abs(kneedle_elbow(ranks, errors) - rank) <= 1


@pytest.mark.slow
def test_nmf_rank_command_on_a_matrix_file_prints_and_plots(tmp_path):
    stack = np.stack([_noisy_low_rank(3, seed=s, shape=(12, 40)).numpy() for s in range(2)])
    path = tmp_path / "x.npy"
    np.save(path, stack)
    plot = tmp_path / "curve.png"
    p = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "nmf-rank", "--matrix", str(path),
                        "--max-rank", "8", "--iters", "100", "--plot", str(plot)],
                       capture_output=True, text=True, timeout=600, encoding="utf-8")
    assert p.returncode == 0, p.stderr
    assert "2 × 12×40 matrices; Kneedle elbow at rank" in p.stdout
    elbow = int(p.stdout.split("Kneedle elbow at rank")[1].split()[0])
    assert abs(elbow - 3) <= 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("array,message", [
    (np.array([[1.0, -2.0], [3.0, 4.0]]), "non-negative"),
    (np.array([1.0, 2.0]), "(M, N) or (B, M, N)"),
    (np.array([{"a": 1}], dtype=object), "not a plain numeric"),
])
def test_nmf_rank_refuses_bad_matrix_files(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    p = main_in_process("nmf-rank", "--matrix", path, "--plot", tmp_path / "p.png")
    assert p.returncode == 2 and p.stderr.startswith("error:") and message in p.stderr
    assert not (tmp_path / "p.png").exists()


def test_layer_matrices_are_what_the_layer_factorises():
    """One (head_dim × voxels) matrix per head for Global matricize, non-negative (after the ReLU)."""
    from LesionFactorizerLib import build_model
    from LesionFactorizerLib.nn.rank_choice import layer_matrices

    torch.manual_seed(0)
    model = build_model("global-factorizer-brats", in_channels=2, widths=(8, 8, 8, 8, 8), head_dim=4, dropout=0.0).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    mats = layer_matrices(model, x, ["encoder1", "bridge"])
    assert mats["encoder1"].shape == (2, 4, 16 ** 3) and (mats["encoder1"] >= 0).all()
    assert mats["bridge"].shape == (2, 4, 1)
