"""Misbehaving HTTP servers for the remote-loading tests, built on Python's http.server.

`serve(root, honour_range=..., failures=N, failure=...)` serves a directory in a thread:
optionally ignoring Range (as http.server does), or failing the next N requests with a 500
or 503, a reset connection, half the body and a hang-up ("midbody"), or half the body and
a stall of `stall_seconds` ("stall"), or send the whole file slowly ("slow"); or, hostile,
answer with a gzip-compressed body ("gzip"), drip one byte a second ("drip"), or ignore Range
and stream an endless body ("flood", counting in `server.sent` what it managed to send); it
counts requests per path. Set `server.failures`
later to fail requests in the middle of a stream.
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
            self._reset()
            return
        if fail and server.failure in ("500", "503"):
            self.send_error(int(server.failure), "try again")
            return
        if fail and server.failure == "slow":
            self._send_slowly()
            return
        if fail and server.failure in ("gzip", "drip", "flood"):
            getattr(self, f"_{server.failure}")()
            return
        if fail:  # "midbody" or "stall": a good start, then half the body and a hang-up or a hang
            self._fail_in_body(server.failure)
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

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _send_slowly(self) -> None:
        """The whole file, 4 KiB every 20 ms (for killing a client mid-download)."""
        with open(self.translate_path(self.path), "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for start in range(0, len(data), 4096):
            if self.server.stalled.wait(0.02):
                break
            self.wfile.write(data[start : start + 4096])
            self.wfile.flush()

    def _gzip(self) -> None:
        """The asked range, gzip-compressed: a 206 whose bytes are not the stored ones."""
        import gzip

        body = gzip.compress(b"\0" * (1 << 20))
        self.send_response(206)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Range", self.headers.get("Range", "bytes=0-0").replace("=", " ") + "/*")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self) -> None:
        """A correct 206 header, then one byte a second until the client gives up."""
        match = RANGE.match(self.headers.get("Range", ""))
        start, end = int(match.group(1)), int(match.group(2))
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{end + 1}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        try:
            for _ in range(end - start + 1):
                if self.server.stalled.wait(1.0):
                    return
                self.wfile.write(b"\0")
                self.wfile.flush()
        except OSError:
            return

    def _flood(self) -> None:
        """A 200 with an endless body (a server ignoring Range on a huge file)."""
        self.send_response(200)
        self.end_headers()
        block = b"\0" * (1 << 16)
        try:
            while not self.server.stalled.is_set():
                self.wfile.write(block)
                with self.server.lock:
                    self.server.sent += len(block)
        except OSError:
            return

    def _fail_in_body(self, how: str) -> None:
        path = self.translate_path(self.path)
        with open(path, "rb") as f:
            data = f.read()
        match = RANGE.match(self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            body = data[start : int(match.group(2)) + 1 if match.group(2) else len(data)]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if how == "stall":
            self.server.stalled.wait(self.server.stall_seconds)
        self._reset()


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (fsspec's exists() does) are expected here


@contextlib.contextmanager
def serve(
    root, *, honour_range: bool = True, failures: int = 0, failure: str = "503", stall_seconds: float = 30
):
    server = QuietServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    server.stall_seconds = stall_seconds
    server.stalled = threading.Event()  # set on shutdown so stalled handlers end
    server.honour_range = honour_range
    server.failures = failures
    server.failure = failure
    server.hits = Counter()
    server.sent = 0
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield server
    finally:
        server.stalled.set()
        server.shutdown()
        server.server_close()
