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
