"""In-process server (Platform, workers=1, uvloop in a thread) with OpenSSL allocation accounting.
Usage: server_probe.py COUNT MODE TLS CIPHER [--trim] [--out DIR]"""
import ctypes, os, sys, gc
HERE = os.path.dirname(os.path.abspath(__file__))
probe = ctypes.CDLL(os.path.join(HERE, "libmemprobe.so"))  # gcc -O2 -shared -fPIC -o libmemprobe.so memprobe.c -lcrypto
probe.probe_live.restype = ctypes.c_size_t
probe.probe_live_usable.restype = ctypes.c_size_t
USE_PROBE = os.environ.get("NOPROBE") != "1"
if USE_PROBE:
    assert probe.probe_install() == 1, "OpenSSL already allocated"

import asyncio, subprocess, threading, time, tracemalloc, tempfile, collections
from pathlib import Path
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "tests"))
import uvloop, httpx
from conftest import SEED_MODEL, Admin
from iotgate.config import Settings
from iotgate.server import Platform
from test_listener_support import sdk_auth_bytes, sdk_post_bytes, property_topic, alink_json, Wire, client_context

import iotgate.server as _srv, iotgate.gateway.tls as _tls
_orig_ctx = _tls.server_context
def _ctx(*a, **k):
    ctx = _orig_ctx(*a, **k)
    if os.environ.get("NUM_TICKETS"):
        ctx.num_tickets = int(os.environ["NUM_TICKETS"])
    if os.environ.get("SUITES"):
        lib = ctypes.CDLL(__import__("_ssl").__file__)
        lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        print("set suites", lib.SSL_CTX_set_ciphersuites(ptr, os.environ["SUITES"].encode()))
    if os.environ.get("CACHE_OFF") == "1":
        lib = ctypes.CDLL(__import__("_ssl").__file__)
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        print("old cache mode", lib.SSL_CTX_ctrl(ptr, 44, 0, None))
    return ctx
_srv.server_context = _ctx
count, mode, tls, cipher = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
out = Path(os.environ.get("OUT", "/tmp/iotgate-idle-probe")); out.mkdir(parents=True, exist_ok=True)
libc = ctypes.CDLL("libc.so.6")
class MI2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena","ordblks","smblks","hblks","hblkhd","usmblks","fsmblks","uordblks","fordblks","keepcost")]
libc.mallinfo2.restype = MI2

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

loop = uvloop.new_event_loop()
th = threading.Thread(target=loop.run_forever, daemon=True); th.start()
def run(c, t=120): return asyncio.run_coroutine_threadsafe(c, loop).result(t)
data = Path(tempfile.mkdtemp()) / "data"
plat = Platform(Settings(data_dir=str(data), device_host="127.0.0.1", device_port=0, admin_port=0, workers=1))
run(plat.start())
port = plat.device_addresses[0][1]
client = httpx.Client(base_url=plat.admin_url, headers={"Authorization": f"Bearer {plat.admin_key}"}, timeout=30)
admin = Admin(client)
pk = admin.product(SEED_MODEL); dn = "probe"; secret = admin.device(pk, dn)["deviceSecret"]
with Wire(port, client_context()) as w:
    w.send(sdk_auth_bytes(pk, dn, secret)); token = w.response().json()["info"]["token"]
req = sdk_post_bytes(property_topic(pk, dn), token, alink_json({"temperature": 21}))
reqfile = out / "req.bin"; reqfile.write_bytes(req)

def hold(n):
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "client.py"), str(port), str(n), mode, tls, cipher, str(reqfile)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = p.stdout.readline()
        lines.append(line.strip())
        if line.startswith("held") or not line:
            break
    return p, lines

def release(p):
    p.stdin.write("\n"); p.stdin.flush(); p.wait(60)

# warm-up: the same kind of connections, then closed
if os.environ.get('NOWARM') != '1':
    p, _ = hold(min(count, 500)); release(p); time.sleep(12)  # past the close_notify linger
gc.collect(); time.sleep(1)
def type_census():
    c = collections.Counter(); sz = collections.Counter()
    for o in gc.get_objects():
        t = repr(type(o))
        c[t] += 1; sz[t] += sys.getsizeof(o)
    return c, sz
if os.environ.get("CENSUS") == "1":
    c0, s0 = type_census()
TM = os.environ.get('TM') == '1'
if TM: tracemalloc.start(int(os.environ.get("TMF", "1")))
m0, r0, o0, u0 = libc.mallinfo2(), rss(), probe.probe_live(), probe.probe_live_usable()
snap0 = tracemalloc.take_snapshot() if TM else None
probe.probe_mark()
gen = 1 + int(os.environ.get("GEN0", "0"))
p, lines = hold(count)
time.sleep(2); gc.collect()
m1, r1, o1, u1 = libc.mallinfo2(), rss(), probe.probe_live(), probe.probe_live_usable()
snap1 = tracemalloc.take_snapshot() if TM else None
if os.environ.get("CENSUS") == "1":
    c1, s1 = type_census()
    for t in sorted(c1, key=lambda t: -(s1[t] - s0[t])):
        if (s1[t] - s0[t]) / count >= 8:
            print(f"  census {t}: {(c1[t]-c0[t])/count:.2f}/conn, {(s1[t]-s0[t])/count:.0f} B/conn (getsizeof)")
held = len(run(asyncio.sleep(0, result=plat.device_server.connections)))
tr_cur = tracemalloc.get_traced_memory()[0]
per = lambda a, b: (b - a) / count
print(lines)
print(f"server connections {held}")
print(f"RSS           {per(r0, r1):8.0f} B/conn")
print(f"malloc in-use {per(m0.uordblks, m1.uordblks):8.0f} B/conn (uordblks; + mmapped {per(m0.hblkhd, m1.hblkhd):.0f})")
print(f"malloc free   {per(m0.fordblks, m1.fordblks):8.0f} B/conn (fordblks), arena {per(m0.arena, m1.arena):.0f}")
print(f"OpenSSL live  {per(o0, o1):8.0f} B/conn requested, {per(u0, u1):.0f} usable")
stats = snap1.compare_to(snap0, 'lineno') if TM else []
py = sum(s.size_diff for s in stats)
print(f"Python traced {py / count:8.0f} B/conn (tracemalloc)")
if TM:
  stats = snap1.compare_to(snap0, 'traceback')
  for s in stats[:25]:
    if abs(s.size_diff) / count >= 8:
        print(f"   {s.size_diff / count:7.0f} B/conn {s.count_diff / count:5.2f} blocks/conn")
        for fr in list(s.traceback)[-6:]:
            print("          ", fr)
if USE_PROBE:
    probe.probe_dump(str(out / "live.txt").encode(), gen)
    agg = collections.defaultdict(lambda: [0, 0, 0])
    for line in open(out / "live.txt"):
        where, size, usable = line.rsplit(" ", 2)
        a = agg[where]; a[0] += 1; a[1] += int(size); a[2] += int(usable)
    rows = sorted(agg.items(), key=lambda kv: -kv[1][2])
    print("OpenSSL live allocations made while connecting, by site (per connection):")
    for where, (n, size, usable) in rows[:40]:
        if usable / count >= 4:
            print(f"   {usable / count:7.0f} B {n / count:5.2f}x  {size / max(n,1):7.0f} B each  {where}")
if "--trim" in sys.argv:
    libc.malloc_trim(0)
    m2 = libc.mallinfo2()
    print(f"after malloc_trim(0): RSS {per(r0, rss()):8.0f} B/conn, in-use {per(m0.uordblks, m2.uordblks):.0f}, free {per(m0.fordblks, m2.fordblks):.0f}")
release(p)
if os.environ.get("AFTER_CLOSE") == "1":
    time.sleep(12)
    m3 = libc.mallinfo2()
    print(f"after the {count} closed: OpenSSL still live {(probe.probe_live() - o0) / count:.0f} B/conn, malloc in-use {per(m0.uordblks, m3.uordblks):.0f} B/conn")
run(plat.stop())
