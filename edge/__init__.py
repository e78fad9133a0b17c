"""inspectd's edge side: the daemon and the CLI. Never imports torch (see tests/edge/test_imports.py)."""

__version__ = "0.1.0"
