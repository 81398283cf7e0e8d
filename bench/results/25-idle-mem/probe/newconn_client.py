import socket, ssl, sys, threading
port, n, threads = int(sys.argv[1]), int(sys.argv[2]), 4
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
req = b"POST /topic/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
def work(k):
    for _ in range(k):
        with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="x") as s:
            s.sendall(req)
            buf = b""
            while True:
                c = s.recv(4096)
                if not c: break
                buf += c
            assert b" 200 " in buf, buf
ts = [threading.Thread(target=work, args=(n // threads,)) for _ in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
