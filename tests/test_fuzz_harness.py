"""The atheris target in fuzz/ stays runnable: replay its corpus (seeds and saved regressions)
through the in-process harness. The fuzzing itself is not part of CI (docs/testing.md)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

from device_listener import Harness  # noqa: E402


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def test_corpus_replays_without_a_failure(harness: Harness) -> None:
    files = sorted((FUZZ / "corpus").iterdir())
    assert len(files) >= 10
    statuses = []
    for f in files:
        out = harness.run(f.read_bytes())
        statuses.append(out.split(b"\r\n", 1)[0])
    assert statuses.count(b"HTTP/1.1 200 OK") >= 8  # the seeds are valid requests that succeed


def test_the_seeds_are_current(harness: Harness) -> None:
    """The corpus seeds are what the harness generates (regenerate: fuzz/device_listener.py --write-seeds)."""
    for n, seed in enumerate(harness.seeds()):
        assert (FUZZ / "corpus" / f"seed-{n:02d}").read_bytes() == seed
