"""What import-linter (pyproject.toml [tool.importlinter], run by `make test`) cannot see: imports at run time.

The contracts check the import statements of our own packages. They cannot see modules imported by name
(`importlib.import_module`, the CLI's command table) nor what a third-party library imports in turn, so these tests
import the modules for real in a fresh interpreter and look at `sys.modules`.
"""

import subprocess
import sys


class TestNoTorchOnTheEdge:
    def test_import_edge_does_not_import_torch(self):
        """`import edge` and every module under it load in a fresh interpreter without torch or the offline packages."""
        code = (
            "import importlib, pkgutil, sys, edge, edge.cli, edge.config, edge.bundle;"
            "mods = [m.name for m in pkgutil.walk_packages(edge.__path__, 'edge.') if not m.name.endswith(('__main__', 'trt', 'cuda_mem'))];"
            "[importlib.import_module(m) for m in mods];"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'detectors', 'export', 'calib')];"
            "assert not bad, bad"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr

    def test_cli_help_without_train_extra_imports(self):
        """`inspectd --help` lists every command without importing torch."""
        code = "import sys; from edge.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nassert 'torch' not in sys.modules"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        for command in ("run", "train", "export", "calibrate", "view", "bench", "demo", "check", "dataset"):
            assert command in result.stdout
