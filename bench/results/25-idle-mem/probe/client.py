"""Open N TLS connections to the device port, optionally send one report on each, hold them.
argv: port count mode(req|hs) tls(13|12) cipher(-|name) token_file(or -) pk dn
Prints 'held N' then waits for a line on stdin, then closes."""
import asyncio, ssl, sys, json, os

port, count, mode, tls, cipher = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
request = open(sys.argv[6], "rb").read() if sys.argv[6] != "-" else b""

async def main():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls == "12":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if os.environ.get("CLIENT_NO_TICKET") == "1":
        ctx.options |= ssl.OP_NO_TICKET
    if cipher != "-":
        ctx.set_ciphers(cipher)
    gate = asyncio.Semaphore(100)
    writers = []
    failed = 0
    async def one():
        nonlocal failed
        async with gate:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, limit=4096)
                if mode == "req":
                    w.write(request)
                    head = await r.readuntil(b"\r\n\r\n")
                    n = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            n = int(line.split(b":")[1])
                    body = await r.readexactly(n)
                    if b'"code":0' not in body:
                        failed += 1
                writers.append(w)
            except Exception as e:
                failed += 1
                print("fail", e, file=sys.stderr)
    await asyncio.gather(*(one() for _ in range(count)))
    if writers:
        so = writers[0].get_extra_info("ssl_object")
        print("proto", so.version(), so.cipher()[0], flush=True)
    print("held", len(writers), "failed", failed, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in writers:
        w.close()
asyncio.run(main())
