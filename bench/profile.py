"""Profile the device listener under wrk load: py-spy (flame graph / top) or pyinstrument-free sampling.

    python bench/profile.py [--scenario alink-post] [--duration 10] [--out /tmp/prof] [--server-arg ...]

Starts `iotgate serve` in a temp dir, provisions and authenticates 64 devices, then runs wrk
(-t1 -c64) while `py-spy record` samples the server (all threads, native frames off).
Writes <out>/<scenario>.svg (flame graph) and <out>/<scenario>.txt (py-spy's raw folded stacks,
summarised per function by self time and by total time).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from iotgate.benchmark import scenarios as sc
from iotgate.benchmark.provision import start_server
from iotgate.benchmark.wrk import render_script, run_wrk


def summarise(folded: Path, top: int = 40) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    total_time: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = stack.split(";")
        self_time[frames[-1]] += n
        for f in set(frames):
            total_time[f] += n
    out = [f"{samples} samples", "", "self time:"]
    out += [f"{100 * n / samples:6.2f}%  {f}" for f, n in self_time.most_common(top)]
    out += ["", "total time:"]
    out += [f"{100 * n / samples:6.2f}%  {f}" for f, n in total_time.most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="alink-post")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--out", type=Path, default=Path("/tmp/iotgate-profile"))
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = ap.parse_args()
    if shutil.which("py-spy") is None and not Path(sys.prefix, "bin", "py-spy").exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    pyspy = shutil.which("py-spy") or str(Path(sys.prefix, "bin", "py-spy"))
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="iotgate-prof-"))
    server = start_server(work / "data", args.server_arg)
    try:
        workload = sc.build(args.scenario, server, 64, 8, 50)
        script = work / "s.lua"
        script.write_text(render_script(workload.requests, workload.must_contain, workload.must_not_contain))
        run_wrk(server.device_url, script, 2)  # warm-up
        folded = args.out / f"{args.scenario}.folded"
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "-p",
                str(server.pid),
                "-r",
                str(args.rate),
                "-d",
                str(int(args.duration)),
                "-f",
                "raw",
                "-o",
                str(folded),
                "--threads",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result: list = []
        t = threading.Thread(target=lambda: result.append(run_wrk(server.device_url, script, args.duration)))
        t.start()
        spy.wait()
        t.join()
        r = result[0]
        print(f"{args.scenario}: {r.rate:,.0f} req/s p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms errors {r.errors}")
        text = summarise(folded)
        (args.out / f"{args.scenario}.txt").write_text(text)
        print(text)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
