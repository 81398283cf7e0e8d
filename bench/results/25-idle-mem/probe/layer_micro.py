"""Per-request CPU of the TLS + HTTP layer, in memory: no sockets, min over batches (robust to contention)."""
import asyncio, ssl, sys, time
from pathlib import Path
import uvloop
from iotgate.gateway.http import DeviceServer, Response, ServerLimits
from iotgate.gateway.tls import ensure_self_signed, server_context
from iotgate.gateway.tls_transport import TlsListener

class App:
    def body_limit(self, path): return 65536
    def too_large(self, path): return Response(413, b"{}")
    def bad_request(self, path, reason): return Response(400, b"{}")
    def timeout(self, path, reason, limit): return Response(408, b"{}")
    def failure(self, path): return Response(500, b"{}")
    async def handle(self, request): return Response(200, b'{"code":0,"message":"success","info":{"messageId":1}}')

class FakeTCP:
    def __init__(self): self.out = []
    def write(self, data): self.out.append(bytes(data))
    def get_extra_info(self, name, default=None): return ("127.0.0.1", 5555) if name == "peername" else default
    def close(self): pass
    def abort(self): pass
    def pause_reading(self): pass
    def resume_reading(self): pass
    def is_reading(self): return True
    def get_write_buffer_size(self): return 0

async def main():
    rc, rk, ec, ek = ensure_self_signed(Path("/tmp/idlemem/nc/certs"))
    sctx = server_context("compat", rc, rk, ec, ek)
    srv = DeviceServer(App(), ServerLimits())
    listener = TlsListener(sctx, lambda: __import__("iotgate.gateway.http", fromlist=["x"]).HttpConnection(srv), 10, srv.loop, gate=srv)
    conn = listener(); tcp = FakeTCP(); conn.connection_made(tcp)
    cctx = ssl.create_default_context(); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(cin, cout, server_hostname="x")
    def pump():
        if cout.pending: conn.data_received(cout.read())
        if tcp.out: cin.write(b"".join(tcp.out)); tcp.out.clear()
    for _ in range(10):
        try: c.do_handshake(); break
        except ssl.SSLWantReadError: pump()
    pump()
    body = b'{"id":"1","version":"1.0","params":{"temperature":21,"humidity":40},"method":"thing.event.property.post"}'
    req = b"POST /topic/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async def one():
        c.write(req); conn.data_received(cout.read())
        while not tcp.out: await asyncio.sleep(0)
        cin.write(b"".join(tcp.out)); tcp.out.clear()
        while True:
            try:
                if b"success" in c.read(65536): break
            except ssl.SSLWantReadError: pass
    best = []
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 15):
        t0 = time.process_time()
        for _ in range(2000): await one()
        best.append((time.process_time() - t0) / 2000 * 1e6)
    best.sort()
    print(f"min {best[0]:.2f} µs  p25 {best[len(best)//4]:.2f} µs per request (client side included)")
uvloop.install()
asyncio.run(main())
