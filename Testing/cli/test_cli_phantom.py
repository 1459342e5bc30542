"""``phantom`` option parsing: one range table, argparse types, one-line errors (no data written)."""

from __future__ import annotations

import pytest

from LesionFactorizerLib.cli import build_parser, main
from LesionFactorizerLib.cli.phantom import LAST_INDEX, LIMITS, check_case_range
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.phantoms.layouts import case_id


def parse(*args):
    return build_parser().parse_args(["phantom", "--task", "tumor", "--out", "x", *args])


def test_values_are_parsed_by_argparse_types():
    args = parse("--n", "3", "--seed", "7", "--start", "5000", "--spacing", "4", "--size", "40,48,32")
    assert (args.n, args.seed, args.start) == (3, 7, 5000)
    assert args.spacing == (4.0, 4.0, 4.0) and args.size == (40, 48, 32)
    defaults = parse()
    assert (defaults.n, defaults.seed, defaults.start, defaults.spacing, defaults.size) == (1, 0, 0, None, None)


def test_start_beyond_999_is_allowed_where_the_layout_can_name_it():
    """BraTS ids have five digits: --start 5000 names BraTS2021_05000 (it used to be capped at 999)."""
    check_case_range("tumor", 5000, 10)
    assert case_id("tumor", LAST_INDEX["tumor"]) == "BraTS2021_99999"
    with pytest.raises(UserError, match="past case index 99999"):
        check_case_range("tumor", 99999, 2)


@pytest.mark.parametrize("task", list(LAST_INDEX))
def test_last_index_is_the_last_id_with_the_layouts_digit_count(task):
    last = case_id(task, LAST_INDEX[task])
    assert len(case_id(task, LAST_INDEX[task] + 1)) > len(last) == len(case_id(task, 0))
    check_case_range(task, LAST_INDEX[task], 1)
    with pytest.raises(UserError, match="--start"):
        check_case_range(task, LAST_INDEX[task], 2)


@pytest.mark.parametrize("args, fragment", [
    (["--n", "0"], "argument --n: must be between 1 and 100000"),
    (["--n", "two"], "argument --n: must be a whole number"),
    (["--seed", "-1"], "argument --seed: must be between 0"),
    (["--start", str(LIMITS["--start"][1] + 1)], "argument --start: must be between"),
    (["--spacing", "1,2"], "three comma-separated"),
    (["--spacing", "9"], "between 0.5 and 8.0"),
    (["--size", "4"], "between 8 and 512"),
])
def test_bad_values_are_one_error_line_and_exit_2(tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "--task", "tumor", "--out", str(out), *args])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not out.exists()


def test_a_range_past_the_layout_is_a_user_error_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["phantom", "--task", "ms-new", "--out", str(out), "--start", "990", "--n", "20"]) == 2
    assert "past case index 998" in capsys.readouterr().err and not out.exists()
