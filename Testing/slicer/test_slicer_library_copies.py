"""The GUI keeps a few facts of the library in torch-free form; they must agree with the library."""

from __future__ import annotations


import pytest
from helpers import REPO


@pytest.fixture
def worker(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "LesionFactorizer"))
    from LesionFactorizerModuleLib import worker

    return worker


def test_nmf_layer_names_are_the_networks(worker):
    pytest.importorskip("torch")
    from LesionFactorizerLib.nn.unet import layer_names

    assert list(worker.NMF_LAYERS) == [name for name, _level, _role in layer_names(5)]


def test_device_choices_are_the_clis(worker):
    from LesionFactorizerLib.cli import build_parser

    parser = build_parser()
    segment = next(a for a in parser._subparsers._group_actions[0].choices["segment"]._actions
                   if "--device" in a.option_strings)
    assert list(worker.DEVICES) == list(segment.choices)
    assert [value for value, _title in worker.DEVICE_CHOICES] == list(worker.DEVICES)
    assert segment.default == worker.SegmentRequest.of("stroke", {"dwi": "d"}, "o").settings.device


def test_output_format_is_one_the_cli_accepts(worker):
    from LesionFactorizerLib.pipeline.io import IMAGE_FORMATS

    assert worker.SegmentRequest.of("stroke", {"dwi": "d"}, "o").settings.format == "nrrd"
    assert "nrrd" in IMAGE_FORMATS


def test_every_helper_attribute_the_module_files_use_exists():
    """The module file and the Slicer-side helpers cannot be imported without Slicer, so their
    ``xxxLib.NAME`` uses are checked statically against the names each helper module defines."""
    import ast

    module_dir = REPO / "LesionFactorizer"

    def defined(module_name):
        tree = ast.parse((module_dir / (module_name.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
        names = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        return names

    missing, checked = [], 0
    for path in [module_dir / "LesionFactorizer.py", *sorted((module_dir / "LesionFactorizerModuleLib").glob("*.py"))]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {a.asname: node.module + "." + a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module == "LesionFactorizerModuleLib" for a in node.names if a.asname}
        used = {(n.value.id, n.attr) for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases}
        checked += len(used)
        missing += [f"{path.name}: {alias}.{attr}" for alias, attr in sorted(used) if attr not in defined(aliases[alias])]
    assert checked > 50  # it really found the uses
    assert not missing
