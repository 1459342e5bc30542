"""`lesion-factorizer models presets` through a real subprocess."""

import subprocess
import sys

import pytest
from helpers import main_in_process

from LesionFactorizerLib.presets import PRESETS, build_model, count_parameters

pytestmark = pytest.mark.slow


def _presets_table(*args):
    out = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "models", "presets", *args],
                         capture_output=True, text=True, timeout=600, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    # preset, architecture, in, out, patch, parameters, GFLOPs[, thesis M params, thesis GFLOPs]
    return {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:] if line.strip()}


def test_presets_table_lists_every_preset_with_exact_counts():
    rows = _presets_table("--no-flops")
    assert set(rows) == set(PRESETS)
    for name, cols in rows.items():
        assert int(cols[5]) == count_parameters(build_model(name)), name
        thesis = PRESETS[name].thesis
        assert (len(cols) == 9) == (thesis is not None), name
        if thesis:
            assert float(cols[7]) == thesis[0] and float(cols[8]) == thesis[1]


def test_presets_table_counts_flops_beside_the_thesis():
    rows = _presets_table("swin-factorizer-brats", "performer-brats")
    assert set(rows) == {"swin-factorizer-brats", "performer-brats"}
    for cols in rows.values():   # 2 FLOPs per multiply-add, as the thesis counts
        assert abs(float(cols[6]) - float(cols[8])) / float(cols[8]) < 0.05


def test_presets_table_rejects_an_unknown_preset():
    out = main_in_process("models", "presets", "swin-transformer")
    assert out.returncode == 2 and out.stderr.startswith("error: unknown preset(s) swin-transformer")


def test_threads_option_sets_torch_threads_for_the_command_and_its_subprocesses():
    import subprocess
    import sys

    code = ("import os, torch; from LesionFactorizerLib.cli import main; "
            "main(['--threads', '3', 'models', 'list']); "
            "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "3 3"
