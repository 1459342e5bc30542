"""Run by Python at the start of each process the tests start (``conftest.py`` puts this folder on
their ``PYTHONPATH``): the test network becomes buildable there too (``testnet_hook.py``)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("testnet_hook", Path(__file__).resolve().parents[1] / "testnet_hook.py")
_hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_hook)
_hook.install()
