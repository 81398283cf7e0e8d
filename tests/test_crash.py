"""Crash safety, short form of bench/crash.py (the full run: `python bench/crash.py --kills 10`).

The server is SIGKILLed three times under continuous load from many devices on several
connections, restarted each time, and finally stopped with SIGTERM under load. Every report a
device was told succeeded must be stored exactly once, under the message ID it was told; the
server must never answer with an error, and must exit 0 on SIGTERM.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.timeout(300)


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "crash.py"
    spec = importlib.util.spec_from_file_location("iotgate_bench_crash", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


crash = _load_bench()


def check(verdict: object) -> None:
    v = verdict
    print(crash.report(v))
    assert v.kills == 3 and len(v.restart_s) == 3
    assert v.acked > 300  # load really flowed, before and after every restart
    assert v.missing == [], "acknowledged reports were lost"
    assert v.duplicated == [], "reports were stored twice"
    assert v.wrong_id == [], "reports were stored under another message ID than acknowledged"
    assert v.error_replies == [], "the server answered with errors"
    assert v.index_problems == [], "SQLite's history index does not match history after the clean stop"
    assert v.status_problems == [], "latest values do not match history after the clean stop"
    assert v.sigterm_exit == 0 and v.sigterm_acked_during > 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_sqlite_survives_sigkill_and_sigterm(tmp_path: Path, workers: int) -> None:
    """workers=2: reports travel from the device workers to the main process, the one writer."""
    verdict = await crash.run(
        tmp_path, None, kills=3, devices=30, connections=6, run_s=(0.3, 0.8), workers=workers, seed=1
    )
    check(verdict)


async def test_postgres_survives_sigkill_and_sigterm(tmp_path: Path, pg_url: str) -> None:
    # one process here (worker kills are in test_postgres_e2e.py); `bench/crash.py --workers 2` for more
    check(await crash.run(tmp_path, pg_url, kills=3, devices=30, connections=6, run_s=(0.3, 0.8), seed=2))
