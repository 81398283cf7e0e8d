"""Per-process CPU per request under wrk, optional py-spy over the process tree.

    PYTHONPATH=<src> python harness.py --scenario alink-post --duration 8 [--spy out.folded] [--native]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from iotgate.benchmark import procstat
from iotgate.benchmark import scenarios as sc
from iotgate.benchmark.provision import start_server
from iotgate.benchmark.wrk import render_script, run_wrk


def cpu_map(pids: list[int]) -> dict[int, tuple[float, float]]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) / 100, int(fields[12]) / 100)  # utime, stime
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="alink-post")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--spy", default="")
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--server-arg", action="append", default=[])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="iotgate-h-"))
    server = start_server(work / "data", args.server_arg)
    try:
        workload = sc.build(args.scenario, server, 64, 8, 50)
        script = work / "s.lua"
        script.write_text(render_script(workload.requests, workload.must_contain, workload.must_not_contain))
        run_wrk(server.device_url, script, 2)
        assert server.pid
        pids = [server.pid, *procstat.children(server.pid)]
        spy = None
        if args.spy:
            cmd = [str(Path(sys.prefix, "bin", "py-spy")), "record", "-p", str(server.pid), "--subprocesses",
                   "-r", "200", "-d", str(int(args.duration)), "-f", "raw", "-o", args.spy]
            if args.native:
                cmd.append("--native")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        def batches():
            txt = server.admin.get("/metrics").text
            c = n_ = 0.0
            for l in txt.splitlines():
                if l.startswith("iotgate_commit_batch_size_count") or l.startswith("iotgate_commit_batch_count"):
                    c = float(l.split()[-1])
                if l.startswith("iotgate_commit_batch_size_sum") or l.startswith("iotgate_commit_batch_sum"):
                    n_ = float(l.split()[-1])
            return c, n_
        b0 = batches()
        th0 = procstat.thread_cpu_seconds(server.pid)
        before = cpu_map(pids)
        t0 = time.monotonic()
        r = run_wrk(server.device_url, script, args.duration)
        after = cpu_map(pids)
        elapsed = time.monotonic() - t0
        th1 = procstat.thread_cpu_seconds(server.pid)
        b1 = batches()
        if spy:
            spy.wait()
        n = r.requests
        rows = {}
        for pid in pids:
            if pid in before and pid in after:
                u = after[pid][0] - before[pid][0]
                s = after[pid][1] - before[pid][1]
                name = "main" if pid == server.pid else f"w{pid}"
                rows[name] = (u * 1e6 / n, s * 1e6 / n)
        tot = sum(u + s for u, s in rows.values())
        line = " ".join(f"{k}={u:.1f}+{s:.1f}" for k, (u, s) in rows.items())
        print(f"{args.label} {args.scenario}: {r.rate:,.0f}/s p99 {r.p99_ms:.1f} ms err {r.errors} "
              f"us/req total {tot:.1f} [{line}] elapsed {elapsed:.1f}")
        nb = b1[0] - b0[0]
        print("  commits", nb, "reports/commit", (b1[1] - b0[1]) / nb if nb else 0,
              "main threads us/req", {k: round((th1.get(k, 0) - v) * 1e6 / n, 1) for k, v in th0.items() if th1.get(k, 0) - v > 0})
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"label": args.label, "scenario": args.scenario, "rate": r.rate, "p99": r.p99_ms,
                                    "errors": r.errors, "total_us": tot, "rows": rows}) + "\n")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
