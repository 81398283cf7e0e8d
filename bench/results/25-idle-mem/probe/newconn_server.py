"""DeviceServer with a fixed-reply app over the real TLS layer; prints its port; runs until killed."""
import asyncio, sys
from pathlib import Path
import uvloop
from iotgate.gateway.http import DeviceServer, Response, ServerLimits
from iotgate.gateway.tls import ensure_self_signed, server_context

class App:
    def body_limit(self, path): return 65536
    def too_large(self, path): return Response(413, b"{}")
    def bad_request(self, path, reason): return Response(400, b"{}")
    def timeout(self, path, reason, limit): return Response(408, b"{}")
    def failure(self, path): return Response(500, b"{}")
    async def handle(self, request): return Response(200, b'{"code":0,"message":"success","info":{"messageId":1}}')

async def main():
    d = Path(sys.argv[1]); d.mkdir(exist_ok=True)
    rc, rk, ec, ek = ensure_self_signed(d)
    ctx = server_context("compat", rc, rk, ec, ek)
    srv = DeviceServer(App(), ServerLimits())
    addrs = await srv.listen("127.0.0.1", 0, ctx)
    print(addrs[0][1], flush=True)
    await asyncio.Event().wait()
import gc, time, signal, os
_gc = {"t": 0.0, "n": [0, 0, 0], "start": 0.0}
def _cb(phase, info):
    if phase == "start": _gc["start"] = time.perf_counter()
    else:
        _gc["t"] += time.perf_counter() - _gc["start"]; _gc["n"][info["generation"]] += 1
gc.callbacks.append(_cb)
def _report(*a):
    print("gc", round(_gc["t"] * 1000, 1), "ms", _gc["n"], file=sys.stderr, flush=True)
signal.signal(signal.SIGUSR1, _report)
uvloop.install()
asyncio.run(main())
