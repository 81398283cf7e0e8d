"""nginx as the ceiling: TLS with the same certificates, every request answered with a fixed Alink success."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from iotgate.benchmark.procstat import children, tree_cpu_seconds
from iotgate.gateway.tls import COMPAT_EXTRA, MODERN_CIPHERS

FIXED_REPLY = '{"code":0,"message":"success","info":{"messageId":1}}'

CONFIG = """\
worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 30000;

events {{
    worker_connections 15000;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_max_body_size 1m;
    server_tokens off;

    server {{
        listen 127.0.0.1:{port} ssl backlog=2048;
{certificates}
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers on;

        location / {{
            default_type application/json;
            return 200 '{reply}';
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    for candidate in ("nginx", "/usr/sbin/nginx"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def render_config(directory: Path, port: int, certificates: list[tuple[Path, Path]], tls_profile: str) -> str:
    lines = []
    for cert, key in certificates:
        lines.append(f"        ssl_certificate {cert};")
        lines.append(f"        ssl_certificate_key {key};")
    ciphers = MODERN_CIPHERS if tls_profile == "modern" else f"{MODERN_CIPHERS}:{COMPAT_EXTRA}"
    return CONFIG.format(dir=directory, port=port, certificates="\n".join(lines), ciphers=ciphers, reply=FIXED_REPLY)


class Nginx:
    """An nginx master with its workers in a private directory, on 127.0.0.1:port."""

    def __init__(
        self, directory: Path, port: int, certificates: list[tuple[Path, Path]], tls_profile: str = "compat"
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
        self.binary = binary
        self.directory = directory
        self.port = port
        self.certificates = certificates
        self.tls_profile = tls_profile
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Nginx:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(render_config(self.directory, self.port, self.certificates, self.tls_profile))
        log = open(self.directory / "stderr.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.directory), "-c", str(conf), "-e", str(self.directory / "error.log")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        import socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if children(self.proc.pid):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start listening on port {self.port}: {self.error_log()}")

    def error_log(self) -> str:
        texts = []
        for name in ("stderr.log", "error.log"):
            path = self.directory / name
            if path.exists():
                texts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(texts).strip()

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pids())

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
