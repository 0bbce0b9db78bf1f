"""Misbehaving HTTP servers for the remote-loading tests, built on Python's http.server.

`serve(root, honour_range=..., failures=N, failure="503"|"reset")` serves a directory in a
thread: optionally ignoring Range (as http.server does), or failing the first N requests
with a 503 or a reset connection, and counting requests per path.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.hits[self.path] += 1
            fail = server.failures > 0
            if fail:
                server.failures -= 1
        if fail and server.failure == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if fail:
            self.send_error(503, "try again")
            return
        match = RANGE.match(self.headers.get("Range", ""))
        if not server.honour_range or match is None:
            super().do_GET()  # http.server ignores Range: 200 and the whole file
            return
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404, "not found")
            return
        size = os.path.getsize(path)
        start = int(match.group(1))
        end = min(size - 1, int(match.group(2))) if match.group(2) else size - 1
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (fsspec's exists() does) are expected here


@contextlib.contextmanager
def serve(root, *, honour_range: bool = True, failures: int = 0, failure: str = "503"):
    server = QuietServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    server.honour_range = honour_range
    server.failures = failures
    server.failure = failure
    server.hits = Counter()
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield server
    finally:
        server.shutdown()
        server.server_close()
