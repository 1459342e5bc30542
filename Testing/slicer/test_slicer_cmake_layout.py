"""Configure the extension's CMake with real CMake and check the packaged layout.

Slicer's SDK cannot be installed here, so Testing/slicer_standin/sdk.py stands in for the four
things our CMake uses from it. What is checked is ours: the CMake code runs, every listed file exists, and the build
tree has the layout the module relies on at run time (library and bundled data next to the module,
found by the module's own path logic, importable without torch).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from slicer_standin import sdk
from helpers import MODULE_DIR, REPO

pytestmark = pytest.mark.slow

sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture(scope="module")
def build_tree(tmp_path_factory):
    proc, build = sdk.configure(tmp_path_factory.mktemp("cmake"))
    if proc is None:
        pytest.skip("cmake is not installed")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build


def test_configure_refuses_slicer_older_than_the_worker_needs(tmp_path):
    """Slicer 5.8 embeds Python 3.9; the worker needs 3.10+, so the extension is not built for it."""
    from LesionFactorizerModuleLib.dependencies import MIN_SLICER

    proc, _ = sdk.configure(tmp_path, version="5.8")
    if proc is None:
        pytest.skip("cmake is not installed")
    assert proc.returncode != 0
    assert f"needs Slicer {MIN_SLICER} or newer" in proc.stdout + proc.stderr


def test_configure_registers_the_module_and_its_self_test(build_tree):
    assert (build_tree / "scripted-modules.txt").read_text(encoding="utf-8").split() == ["LesionFactorizer", "TRUE"]
    assert (build_tree / "python-tests.txt").read_text(encoding="utf-8").split() == ["LesionFactorizer.py"]


def test_build_tree_has_the_runtime_layout(build_tree):
    modules = build_tree / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    for rel in ("LesionFactorizer.py", "LesionFactorizerModuleLib/worker.py", "Resources/UI/LesionFactorizer.ui",
                "Resources/Icons/LesionFactorizer.png", "LesionFactorizerLib/__init__.py",
                "LesionFactorizerLib/core/tasks.py", "LesionFactorizerLib/modelfile.py", "LesionFactorizerLib/cli/segment.py",
                "LesionFactorizerLib/nn/window_nmf.c"):
        assert (modules / rel).is_file(), rel
    sources = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "LesionFactorizerLib").rglob("*.py")
                     if "__pycache__" not in p.parts)
    copied = sorted(p.relative_to(modules).as_posix() for p in (modules / "LesionFactorizerLib").rglob("*.py"))
    assert copied == sources  # the worker gets the whole library
    for data in (REPO / "Resources" / "Models").glob("*.safetensors"):
        assert (modules / "Resources" / "Models" / data.name).is_file()
    assert (modules / "Resources" / "Models" / "catalog.json").is_file()

    # In the installed layout the module's own path logic finds the library, the library finds the
    # bundled models folder, and nothing imports torch.
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(modules)!r}]
        from LesionFactorizerModuleLib.libpath import find_library_root, bundled_resources
        root = find_library_root({str(modules)!r})
        assert str(root) == {str(modules)!r}, root
        import LesionFactorizerLib.modelfile as mf, LesionFactorizerLib.core.tasks
        assert mf.__file__.startswith({str(modules)!r}), mf.__file__
        assert bundled_resources(root) / "Models" in [d for d in mf.bundled_model_dirs()]
        from LesionFactorizerLib import catalog   # the bundled catalogue resolves to the bundled files
        assert all(catalog.installed(e)[0] == "bundled" for e in catalog.load_catalog().models)
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "monai")]
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=build_tree, encoding="utf-8")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_worker_starts_from_the_packaged_layout_alone(build_tree):
    """The worker as Slicer starts it: the packaged library on PYTHONPATH, site-packages without any
    .pth file (-S), so neither the repository nor an editable install can supply what is missing."""
    import sysconfig

    modules = build_tree / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    env = {"PYTHONPATH": f"{modules}{os.pathsep}{sysconfig.get_paths()['purelib']}", "PATH": os.environ["PATH"]}

    def worker(*args):
        return subprocess.run([sys.executable, "-S", "-m", "LesionFactorizerLib", *args], capture_output=True,
                              text=True, timeout=120, cwd=build_tree, env=env, encoding="utf-8")

    proc = worker("segment", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--task" in proc.stdout
    proc = worker("train")  # training is not shipped: a clear error, not a traceback
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: 'train' needs the training package"), proc.stderr


def test_kernel_loads_from_the_install_tree_without_a_compiler(build_tree, tmp_path):
    """The extension's CMake compiles the window-NMF kernel: the worker finds it in the install tree
    on a machine without a compiler (no cc/gcc/clang on PATH, no CC), verifies it against its
    manifest, computes what the PyTorch path computes, and compiles nothing."""
    import json
    import sysconfig

    modules = sdk.install(build_tree, tmp_path / "install")
    nn = modules / "LesionFactorizerLib" / "nn"
    record = json.loads((nn / "window_nmf.json").read_text(encoding="utf-8"))
    (tmp_path / "bin").mkdir()
    env = {"PYTHONPATH": f"{modules}{os.pathsep}{sysconfig.get_paths()['purelib']}", "PATH": str(tmp_path / "bin"),
           "HOME": str(tmp_path), "LESION_FACTORIZER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    code = textwrap.dedent("""
        import shutil, torch
        assert not any(map(shutil.which, ("cc", "gcc", "clang"))), "a compiler is on PATH"
        from LesionFactorizerLib.nn import native
        from LesionFactorizerLib.nn.matricize import make_matricize
        from LesionFactorizerLib.nn.nmf import NMF
        z, weight = torch.rand(1, 8, 8, 8, 12), torch.randn(12, 12)
        mat, nmf = make_matricize("swin", 4, 4), NMF(rank=1, iters=3)
        out = torch.zeros_like(z)
        mat.add_projected(z, nmf, weight, out)
        print(native.status()); print(native._state["path"])
        native.library = lambda: None   # the PyTorch path
        expected = torch.zeros_like(z)
        mat.add_projected(z, nmf, weight, expected)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    """)
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env, encoding="utf-8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, path = proc.stdout.split("\n")[:2]
    assert status.startswith("native (prebuilt, ") and path == str(nn / record["library"])
    assert not (tmp_path / "cache").exists()


def test_extension_index_pictures_exist_and_demo_models_are_called_demos():
    import re

    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    prefix = "https://raw.githubusercontent.com/lesionfactorizer/SlicerLesionFactorizer/main/"
    urls = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', cmake).group(1).split()
    urls.append(re.search(r'set\(EXTENSION_ICONURL "([^"]+)"\)', cmake).group(1))
    assert len(urls) >= 3
    for url in urls:
        assert url.startswith(prefix), url
        path = REPO / url[len(prefix):]
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url
        assert path.stat().st_size < 1_000_000, url  # small enough for the repository
    description = re.search(r'set\(EXTENSION_DESCRIPTION "([^"]+)"\)', cmake).group(1)
    assert "synthetic" in description and "demonstration" in description


def test_extension_index_entry_matches_the_extension():
    """The catalog entry to submit to Slicer's ExtensionsIndex (a file named after the extension):
    the fields of catalog entry schema v1.0.1, and what the index's checks compare with the
    repository (project name, a repository name holding "Slicer", a known category, dependencies)."""
    import json
    import re

    entry_file = REPO / "Resources" / "ExtensionsIndex" / "LesionFactorizer.json"
    entry = json.loads(entry_file.read_text(encoding="utf-8"))
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
    assert re.search(r"project\((\w+)\)", cmake).group(1) == entry_file.stem
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake
    assert entry["build_dependencies"] == re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', cmake).group(1).split()
    repository = re.fullmatch(r"https://github\.com/([\w-]+/[\w-]+)\.git", entry["scm_url"]).group(1)
    assert "slicer" in repository.split("/")[1].lower()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        value = re.search(rf'set\({key} "([^"]+)"\)', cmake).group(1)
        assert all(repository in url for url in value.split()), key
    assert (REPO / "LICENSE").is_file()
