"""`lesion-factorizer models presets` through a real subprocess."""

import subprocess
import sys

from LesionFactorizerLib.presets import PRESETS, build_model, count_parameters


def test_presets_table_lists_every_preset_with_exact_counts_and_flops():
    out = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "models", "presets"],
                         capture_output=True, text=True, timeout=300, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == set(PRESETS)
    for name, cols in rows.items():
        assert int(cols[-2]) == count_parameters(build_model(name)), name
        assert float(cols[-1]) > 0
    swin = float(rows["swin-factorizer-brats"][-1])
    assert abs(swin - 174.2) / 174.2 < 0.10  # thesis Table 7.x, 2 FLOPs per multiply-add


def test_threads_option_sets_torch_threads_for_the_command_and_its_subprocesses():
    import subprocess
    import sys

    code = ("import os, torch; from LesionFactorizerLib.cli import main; "
            "main(['--threads', '3', 'models', 'list']); "
            "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "3 3"
