"""Run Debian's nginx on 127.0.0.1 serving a directory with kformat's example rules.

Used by the HTTP tests and `make demo`. The server includes examples/nginx/kformat-locations.conf
(the configuration users copy), turns gzip on everywhere else the way many servers do, and
logs every request with its Range header and the body bytes sent, so callers can count exactly
what a load transferred:

    with LocalNginx(root) as server:
        mark = server.mark()
        kformat.open(server.url("model.kf"))
        print(server.requests_since(mark))
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCATIONS = REPO / "examples" / "nginx" / "kformat-locations.conf"
MARK_PREFIX = "/__kformat_mark__/"

CONFIG = """\
{user}worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format kformat '$request_method $uri $status "$http_range" $body_bytes_sent $bytes_sent';
    access_log {work}/access.log kformat;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    # The types a web page needs (module scripts must be served as JavaScript).
    types {{
        text/html html;
        text/javascript js mjs;
        application/json json;
        text/css css;
        image/png png;
    }}
    sendfile on;
    gzip on;
    gzip_min_length 0;
    gzip_types *;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location {mark_prefix} {{ return 204; }}
        include {locations};
    }}
}}
"""


class NginxUnavailable(RuntimeError):
    """nginx is not installed, or would not start (the message has its error log)."""


def find_nginx() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LogEntry:
    method: str
    uri: str
    status: int
    range: str  # the request's Range header, "-" when absent
    body_bytes: int  # response body bytes sent
    bytes_sent: int  # everything sent, headers included


def _parse(line: str) -> LogEntry:
    method, uri, status, rest = line.split(" ", 3)
    quoted, body, sent = rest.rsplit(" ", 2)
    return LogEntry(method, uri, int(status), quoted.strip('"'), int(body), int(sent))


class LocalNginx:
    """nginx serving `root` on 127.0.0.1:<free port> until stop()."""

    def __init__(self, root: str | os.PathLike, work: str | os.PathLike | None = None):
        self.root = Path(root).resolve()
        self._own_work = work is None
        self.work = Path(work or tempfile.mkdtemp(prefix="kformat-nginx-"))
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._marks = 0

    # -- lifetime ----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "LocalNginx":
        binary = find_nginx()
        if binary is None:
            raise NginxUnavailable("nginx is not installed (make nginx installs Debian's package)")
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        user = "user root root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        conf = self.work / "nginx.conf"
        conf.write_text(
            CONFIG.format(
                user=user,
                work=self.work,
                port=self.port,
                root=self.root,
                locations=LOCATIONS,
                mark_prefix=MARK_PREFIX,
            )
        )
        self.process = subprocess.Popen(
            [binary, "-p", str(self.work), "-e", str(self.work / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NginxUnavailable(f"nginx exited: {self._errors()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NginxUnavailable(
            f"nginx did not listen on port {self.port} within {timeout}s: {self._errors()}"
        )

    def _errors(self) -> str:
        log = self.work / "error.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            text += self.process.stderr.read().decode(errors="replace")
        return text.strip()[-2000:] or "(no error output)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        if self._own_work:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "LocalNginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------
    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def _entries(self) -> list[LogEntry]:
        log = self.work / "access.log"
        if not log.exists():
            return []
        return [_parse(line) for line in log.read_text().splitlines() if line.strip()]

    def mark(self) -> int:
        """Put a marker request in the access log and wait until it is written.

        nginx writes a request's log line before its worker takes the next request, so
        every request answered before the marker is in the log once the marker is."""
        self._marks += 1
        uri = f"{MARK_PREFIX}{self._marks}"
        try:
            urllib.request.urlopen(self.url(uri), timeout=5).close()
        except urllib.error.HTTPError:
            pass  # only the log line matters
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for i, entry in enumerate(self._entries()):
                if entry.uri == uri:
                    return i + 1
            time.sleep(0.01)
        raise RuntimeError(f"marker {uri} never reached nginx's access log")

    def requests_since(self, mark: int) -> list[LogEntry]:
        """Requests logged after `mark` (markers excluded)."""
        end = self.mark()
        return [e for e in self._entries()[mark : end - 1] if not e.uri.startswith(MARK_PREFIX)]
