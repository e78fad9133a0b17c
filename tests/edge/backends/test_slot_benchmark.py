"""Benchmark (outside the suite: `pytest -m benchmark -s`): slot-release throughput on the ring seam."""

import pytest

from tests.edge.backends.bench_slots import main


@pytest.mark.benchmark
def test_slot_release_throughput():
    """Prints batches/s of the real Pipeline per stage-time profile and slot count; asserts nothing about speed."""
    main(["--frames", "200", "--repeats", "3"])
