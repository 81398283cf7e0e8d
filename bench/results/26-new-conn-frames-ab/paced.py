"""Paced keep-alive alink-post (wrk delay()): the main process's cost per report at a new-conn-like
arrival rate without saturating the cores. PYTHONPATH=<src> python paced.py --label L --delay-ms 32"""
from __future__ import annotations
import argparse, json, shutil, tempfile, time
from pathlib import Path
from iotgate.benchmark import procstat, scenarios as sc
from iotgate.benchmark.provision import start_server
from iotgate.benchmark.wrk import render_script, run_wrk

def cpu(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) / 100, int(f[12]) / 100

def ctx(pids):
    tot = 0
    for pid in pids:
        for t in Path(f"/proc/{pid}/task").iterdir():
            try:
                for l in (t / "status").read_text().splitlines():
                    if l.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        tot += int(l.split()[1])
            except OSError:
                pass
    return tot

def metric(server, names):
    out = {}
    for l in server.admin.get("/metrics").text.splitlines():
        for n in names:
            if l.startswith(n + " ") or l.startswith(n + "{"):
                out[n] = out.get(n, 0.0) + float(l.split()[-1])
    return out

ap = argparse.ArgumentParser(); ap.add_argument("--label"); ap.add_argument("--delay-ms", type=int, default=32)
ap.add_argument("--duration", type=float, default=10); ap.add_argument("--json", default="/tmp/nc2/res/paced.jsonl")
a = ap.parse_args()
work = Path(tempfile.mkdtemp(prefix="iotgate-pc-"))
server = start_server(work / "data", [])
try:
    wl = sc.build("alink-post", server, 64, 8, 50)
    s = work / "s.lua"
    lo = a.delay_ms * 3 // 4; hi = a.delay_ms * 5 // 4
    s.write_text(render_script(wl.requests, wl.must_contain, wl.must_not_contain) + f"\nfunction delay()\n  return math.random({lo}, {hi})\nend\n")
    run_wrk(server.device_url, s, 2)
    pids = [server.pid, *procstat.children(server.pid)]
    names = ["iotgate_commit_batch_size_count", "iotgate_commit_batch_size_sum"]
    m0 = metric(server, names); th0 = procstat.thread_cpu_seconds(server.pid); c0 = {p: cpu(p) for p in pids}
    x0m = ctx([server.pid]); x0w = ctx(pids[1:])
    r = run_wrk(server.device_url, s, a.duration)
    x1m = ctx([server.pid]); x1w = ctx(pids[1:])
    c1 = {p: cpu(p) for p in pids}; th1 = procstat.thread_cpu_seconds(server.pid); m1 = metric(server, names)
    n = r.requests
    main = sum(c1[server.pid]) - sum(c0[server.pid])
    workers = sum(sum(c1[p]) - sum(c0[p]) for p in pids[1:])
    commits = m1[names[0]] - m0[names[0]]; reps = m1[names[1]] - m0[names[1]]
    row = {"label": a.label, "rate": r.rate, "p50": r.p50_ms, "p99": r.p99_ms, "errors": r.errors,
           "main_us": main * 1e6 / n, "main_user_us": (c1[server.pid][0] - c0[server.pid][0]) * 1e6 / n,
           "main_sys_us": (c1[server.pid][1] - c0[server.pid][1]) * 1e6 / n,
           "workers_us": workers * 1e6 / n, "main_cs": (x1m - x0m) / n, "workers_cs": (x1w - x0w) / n, "per_commit": reps / commits if commits else 0,
           "main_per_commit_us": main * 1e6 / commits if commits else 0,
           "threads": {k: round((th1.get(k, 0) - v) * 1e6 / n, 1) for k, v in th0.items() if th1.get(k, 0) - v > 0}}
    print(json.dumps(row))
    with open(a.json, "a") as f: f.write(json.dumps(row) + "\n")
finally:
    server.stop(); shutil.rmtree(work, ignore_errors=True)
