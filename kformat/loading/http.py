"""HTTP(S) range reads that a hostile or broken server cannot turn into a hang or a flood.

fsspec's HTTP backend buffers and decompresses whole bodies before anyone checks their
length, and has only an idle timeout. Here, for plain http(s) URLs:
- every request asks for `Accept-Encoding: identity`, and a reply with any other
  Content-Encoding is refused (its bytes are not the bytes the manifest hashes);
- bodies are read incrementally and the connection is dropped as soon as a reply holds more
  than was asked (a server ignoring Range is caught after the requested length, not after the
  whole file), and a 206 must start where it was asked to;
- each socket read has a timeout, and each request an overall deadline (a base plus a time
  per byte asked, so a server dripping a byte a second fails in seconds, not hours).
Transient failures (resets, 5xx, timeouts) surface as exceptions the store retries.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from ..errors import StorageError

CONNECT_TIMEOUT_SECONDS = 30
READ_TIMEOUT_SECONDS = 60
DEADLINE_BASE_SECONDS = 30
DEADLINE_MIN_RATE = 64 << 10  # bytes per second a request may not fall below, beyond the base
CHUNK = 64 << 10
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HttpStatusError(OSError):
    """A reply with an error status; `status` lets the store tell transient ones (5xx, 429)."""

    def __init__(self, status: int, url: str):
        super().__init__(f"HTTP {status} for {url}")
        self.status = status


class RangeIgnored(Exception):
    """The server answered a ranged read with more than was asked: it ignores Range."""


class HttpDropped(ConnectionError):
    """The body stopped before it was complete (retried by the store)."""


@dataclass(frozen=True)
class HttpOptions:
    headers: dict
    connect_timeout: float
    read_timeout: float
    deadline: float | None  # seconds per request; None: base + bytes / DEADLINE_MIN_RATE

    @classmethod
    def from_storage_options(cls, options: dict) -> "HttpOptions":
        """Understands `headers`, `timeout` (seconds per socket read), `deadline` (seconds per
        request), and aiohttp's `client_kwargs={"timeout": ClientTimeout(...)}` as fsspec takes it."""
        options = dict(options)
        headers = dict(options.pop("headers", None) or {})
        connect, read, deadline = CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS, None
        client = dict(options.pop("client_kwargs", None) or {})
        client_timeout = client.pop("timeout", None)
        if client:
            options.update({f"client_kwargs.{k}": v for k, v in client.items()})
        if client_timeout is not None:
            connect = getattr(client_timeout, "sock_connect", None) or connect
            read = getattr(client_timeout, "sock_read", None) or read
            deadline = getattr(client_timeout, "total", None)
        read = float(options.pop("timeout", read))
        deadline = options.pop("deadline", deadline)
        if options:
            raise StorageError(
                f"unknown HTTP storage option(s): {', '.join(sorted(options))} (kformat's HTTP reader takes"
                " headers, timeout, deadline and client_kwargs={'timeout': ...}; for anything else open"
                " 'simplecache::URL', which goes through fsspec)"
            )
        return cls(headers, float(connect), read, None if deadline is None else float(deadline))


class HttpFiles:
    """Range reads and sizes of URLs through `requests`, one session per thread."""

    def __init__(self, options: HttpOptions):
        try:
            import requests
        except ImportError:
            raise StorageError("reading over HTTP needs pip install 'kformat[http]'") from None
        self._requests = requests
        self.options = options
        self._local = threading.local()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
        return session

    def _headers(self, extra: dict) -> dict:
        return {**self.options.headers, "Accept-Encoding": "identity", **extra}

    def _get(self, url: str, headers: dict, method: str = "GET"):
        o = self.options
        try:
            reply = self._session().request(
                method,
                url,
                headers=self._headers(headers),
                stream=True,
                timeout=(o.connect_timeout, o.read_timeout),
                allow_redirects=True,
            )
        except self._requests.RequestException as exc:
            raise HttpDropped(f"{type(exc).__name__}: {exc}") from None
        if reply.status_code == 404 or reply.status_code == 410:
            reply.close()
            raise FileNotFoundError(url)
        if reply.status_code >= 400 and reply.status_code != 416:
            reply.close()
            raise HttpStatusError(reply.status_code, url)
        encoding = reply.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            reply.close()
            raise StorageError(
                f"{url}: the server sent Content-Encoding: {encoding} although kformat asked for the bytes"
                " as stored (identity); serve .kf and .kfs uncompressed, with Cache-Control: no-transform"
            )
        return reply

    def cat(self, url: str, start: int, end: int) -> bytes:
        """Bytes [start, end), or fewer at the end of the file; RangeIgnored as soon as the
        server sends more than was asked."""
        want = end - start
        if want <= 0:
            return b""
        began = time.monotonic()
        deadline = self.options.deadline
        if deadline is None:
            deadline = DEADLINE_BASE_SECONDS + want / DEADLINE_MIN_RATE
        with self._get(url, {"Range": f"bytes={start}-{end - 1}"}) as reply:
            if reply.status_code == 416:  # the range starts past the end of the file
                return b""
            if reply.status_code == 206:
                found = CONTENT_RANGE.match(reply.headers.get("Content-Range", ""))
                if found is None or int(found.group(1)) != start:
                    raise StorageError(
                        f"{url}: asked for bytes from {start}, the server answered"
                        f" Content-Range {reply.headers.get('Content-Range')!r}"
                    )
            elif start > 0:  # a 200 to a ranged read from the middle: the whole file is coming
                raise RangeIgnored()
            body = bytearray()
            raw = reply.raw
            while len(body) <= want:
                if time.monotonic() - began > deadline:
                    raise StorageError(
                        f"{url}: bytes {start}..{end} took longer than {deadline:.0f} s"
                        f" ({len(body)} of {want} bytes arrived); the server is too slow or stalled"
                    )
                try:
                    chunk = raw.read1(min(CHUNK, want + 1 - len(body)), decode_content=False)
                except Exception as exc:  # noqa: BLE001 - urllib3 raises many kinds on a broken body
                    raise HttpDropped(f"{type(exc).__name__}: {exc}") from None
                if not chunk:
                    break
                body += chunk
            if len(body) > want:
                raise RangeIgnored()
            expected = reply.headers.get("Content-Length")
            if (
                len(body) <= want
                and expected is not None
                and expected.isdigit()
                and len(body) < int(expected)
            ):
                raise HttpDropped(f"{url}: the body stopped after {len(body)} of {expected} bytes")
            return bytes(body)

    def size(self, url: str) -> int:
        with self._get(url, {}, method="HEAD") as reply:
            length = reply.headers.get("Content-Length")
            if reply.status_code == 200 and length is not None and length.isdigit():
                return int(length)
        with self._get(url, {"Range": "bytes=0-0"}) as reply:
            found = CONTENT_RANGE.match(reply.headers.get("Content-Range", ""))
            if found is not None and found.group(3) != "*":
                return int(found.group(3))
        raise StorageError(
            f"{url}: the server tells neither Content-Length nor Content-Range; cannot size it"
        )
