"""The wheel's one compiled part, the window-NMF kernel (LesionFactorizerLib/nn/window_nmf.c), and
the requirements (their home: LesionFactorizerLib/core/requirements.py).

Everything else is declared in pyproject.toml. The kernel is a plain C shared library that
nn/native.py loads with ctypes (no Python C API): it is built as an extension only to reuse
setuptools' compiler setup, and its manifest (nn/kernelfile.py) is written beside it. It is
optional: where no compiler works, the wheel still builds and installs without it, and the
PyTorch path runs (report.json settings.window_nmf says so).
"""

import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from LesionFactorizerLib.core.requirements import EXTRAS, REQUIRES  # noqa: E402 - stdlib-only
from LesionFactorizerLib.nn.kernelfile import PREBUILT, SOURCE, manifest  # noqa: E402 - stdlib-only

NOT_BUILT = "warning: the window-NMF kernel was not compiled ({}); this installation runs the PyTorch path instead"


class BuildKernel(build_ext):
    def get_ext_filename(self, fullname):
        # no Python ABI tag: nothing imports it, any Python on this platform can load it
        return os.path.join(*fullname.split(".")) + {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")

    def get_export_symbols(self, ext):
        return []   # no PyInit_ function to export on Windows; window_nmf.c exports its own

    def build_extension(self, ext):
        if self.compiler.compiler_type != "msvc":
            ext.extra_compile_args = ["-O3", "-std=c99"]   # portable: a wheel runs on other CPUs than its builder's
        super().build_extension(ext)   # a failure: the extension is optional, build_ext warns and goes on
        library = Path(self.get_ext_fullpath(ext.name))
        compiler = Path(getattr(self.compiler, "compiler_so", ["msvc"])[0]).name
        record = manifest(library, f"{compiler}, setuptools")
        library.with_name(PREBUILT.name).write_text(json.dumps(record), encoding="utf-8")

    def copy_extensions_to_source(self):
        """Editable installs (``pip install -e``) copy the library into the sources: its manifest too."""
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace, built = map(Path, self._get_inplace_equivalent(build_py, ext))
            if built.with_name(PREBUILT.name).exists():
                self.copy_file(str(built.with_name(PREBUILT.name)), str(inplace.with_name(PREBUILT.name)))

    def run(self):
        try:
            super().run()
        except Exception as exc:   # noqa: BLE001 - e.g. no compiler at all (Windows without Build Tools)
            print(NOT_BUILT.format(exc), file=sys.stderr)


setup(install_requires=list(REQUIRES), extras_require={name: list(reqs) for name, reqs in EXTRAS.items()},
      ext_modules=[Extension("LesionFactorizerLib.nn.window_nmf", [f"LesionFactorizerLib/nn/{SOURCE.name}"], optional=True,
                             libraries=[] if sys.platform == "win32" else ["m"])],   # sqrtf: libm, part of the C runtime on Windows
      cmdclass={"build_ext": BuildKernel})
