"""What every iotgate process does first: the event loop it runs on, and for the processes the main
process spawns (device workers, the forwarding sink process), logging, signals and priority."""

from __future__ import annotations

import contextlib
import os
import signal


def install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        pass


def start_child(log_level: str, log_format: str, nice: int) -> None:
    """In a spawned child: log like the parent, leave Ctrl-C to the parent (it reaches the whole
    process group; the parent stops its children in order), run `nice` steps nicer, use uvloop."""
    from iotgate.logs import configure

    configure(log_level, None if log_format == "auto" else log_format == "json")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(nice)
    install_uvloop()
