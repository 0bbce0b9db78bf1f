"""The store adapter: the only module that talks to fsspec (imported when a URL needs it:
local paths and plain HTTP(S) are read by kformat itself).

Format code asks for "bytes [start, end) of key" where key is a path relative to the
container's root ("" for a single file, "manifest.kf" or "shards/<hash>.kfs" in a sharded
directory). Every reply's length is checked: fsspec's HTTP backend does not check for a 206
reply, so a server that ignores `Range` would otherwise hand back the whole file. Adjacent
ranges are merged and fetched concurrently; transient failures are retried with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import NotFound, StorageError
from .http import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS, HttpFiles, HttpOptions, RangeIgnored
from .local import LocalFiles, local_path
from .ranges import merge_ranges
from .transient import is_transient as _is_transient

if TYPE_CHECKING:
    import fsspec

RETRIES = 3
HTTP_CONNECTIONS = 8  # ranges of one batch fetched at once over HTTP
BACKOFF_SECONDS = 0.2
MERGE_GAP = 4096  # merge ranges closer than this into one request
MERGE_MAX = 16 << 20  # never merge into one request larger than this
# A local file's merged read is cut into its blobs by copying them out again, so there only
# small blobs share a read: a VGG16 `mobile` load took 0.95x the time (medians of 8, in turn)
# with each tile read on its own, and a read costs a pread and two stats (the file checked
# unchanged), which thousands of tiny blobs would repeat.
LOCAL_MERGE_MAX = 256 << 10
# A stalled server must not hang a reader: HTTP requests fail (and are retried) after this
# long without a byte or without a connection. Pass client_kwargs={"timeout": ...} to change it.

log = logging.getLogger(__name__)


# fsspec's caching layers download to the copy's final name and open it by a check-then-open,
# so one thread's download or eviction can be seen half done by another: reads through a caching
# layer take turns (after the download they are local reads; decoding stays parallel).
_CACHE_LOCK = threading.RLock()


def _with_timeouts(client_kwargs: dict | None) -> dict:
    """aiohttp's defaults wait 5 minutes in total and forever per read on a slow body."""
    client_kwargs = dict(client_kwargs or {})
    if "timeout" not in client_kwargs:
        try:
            import aiohttp
        except ImportError:  # fsspec says what to install when it needs aiohttp
            return client_kwargs
        client_kwargs["timeout"] = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=READ_TIMEOUT_SECONDS
        )
    return client_kwargs


@dataclass(frozen=True)
class ByteRange:
    key: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


class ReadCounter:
    """Bytes and requests fetched, shared by a store and its children (thread-safe)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            self.requests += 1


class Store:
    """Ranged reads below one root URL, with length checks, merging and retries."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem | None,
        root: str,
        url: str,
        retries: int = RETRIES,
        counter: ReadCounter | None = None,
        http: HttpFiles | None = None,
        local: bool = False,
    ):
        self.fs = fs  # None for local paths and plain http(s) URLs, which kformat reads itself
        self.http = http
        self.root = root.rstrip("/") if root not in ("/", "") else root
        self.url = url
        self.retries = retries
        self.counter = counter or ReadCounter()
        # Local files are read by kformat itself: regular files only, one handle each.
        self.local = LocalFiles(self.root) if local else None
        self.caching = getattr(fs, "_check_file", None) is not None  # simplecache::, filecache::

    @property
    def bytes_read(self) -> int:
        return self.counter.bytes

    @property
    def requests(self) -> int:
        return self.counter.requests

    @classmethod
    def from_url(cls, url: str, **storage_options) -> "Store":
        url = str(url)
        path = local_path(url)
        if path is not None:
            return cls(None, path, url, local=True)
        if url.split("://", 1)[0].lower() in ("http", "https") and "::" not in url:
            return cls(None, url, url, http=HttpFiles(HttpOptions.from_storage_options(storage_options)))
        if "::" in url and any(part.split("://", 1)[0] in ("http", "https") for part in url.split("::")):
            # fsspec's HTTP under a cache (simplecache::https://...): its options are keyed "http".
            inner = dict(storage_options.get("http") or {})
            # Ask for the bytes as stored: a compressed reply would make Range and
            # Content-Length refer to other bytes than the ones the manifest describes.
            inner.setdefault("headers", {"Accept-Encoding": "identity"})
            inner["client_kwargs"] = _with_timeouts(inner.get("client_kwargs"))
            storage_options["http"] = inner
        try:
            from fsspec.implementations.local import LocalFileSystem

            fs, path = _filesystem(url, storage_options)
        except (ImportError, ValueError, TypeError) as exc:
            raise StorageError(f"cannot open {url!r}: {exc}") from None
        return cls(fs, path, url, local=isinstance(fs, LocalFileSystem))

    def child(self, root: str, url: str) -> "Store":
        """A store for another root on the same filesystem (the directory of a manifest)."""
        return Store(self.fs, root, url, self.retries, self.counter, self.http, self.local is not None)

    def path(self, key: str) -> str:
        if not key:
            return self.root
        return f"{self.root}/{key}" if self.root else key

    def describe(self, key: str) -> str:
        return self.url if not key else f"{self.url.rstrip('/')}/{key}"

    def _retrying(self, what: str, key: str, call):
        delay = BACKOFF_SECONDS
        for attempt in range(self.retries + 1):
            try:
                return call()
            except FileNotFoundError:
                raise NotFound(f"{self.describe(key)}: not found") from None
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised as ours
                if isinstance(exc, (StorageError, RangeIgnored)):
                    raise
                if attempt < self.retries and _is_transient(exc):
                    log.info("%s %s: %s; retrying in %.1fs", what, self.describe(key), exc, delay)
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise StorageError(
                    f"{what} {self.describe(key)} failed: {type(exc).__name__}: {exc}"
                ) from None
        raise AssertionError("unreachable")

    def is_dir(self) -> bool | None:
        """Whether the root is a directory, or None where asking would cost a download.

        fsspec's HTTP backend answers `isdir` by GETting the URL and scanning it for links,
        which for a model file means fetching all of it; caching wrappers pass the call on.
        """
        if self.local is not None:
            return os.path.isdir(self.root)
        fs = self.fs
        if fs is None:  # plain HTTP: asking would mean downloading
            return None
        import fsspec

        while isinstance(getattr(fs, "fs", None), fsspec.AbstractFileSystem) and fs.fs is not fs:
            fs = fs.fs  # unwrap simplecache::, filecache::, blockcache::
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        if any(str(p).startswith("http") for p in protocols):
            return None
        try:
            return bool(self.fs.isdir(self.root))
        except Exception:  # noqa: BLE001 - a backend that cannot tell: treat as a file
            return False

    def evict_cached(self, key: str) -> bool:
        """Drop a caching layer's local copy of `key` (simplecache::, filecache::), so the
        next read fetches it again; False when there is no such layer or copy.

        fsspec writes a download straight to its cache name, so a reader killed mid-download
        leaves a partial copy that every later read would trust. Such a copy is a prefix of
        the file: it shows up as a short read or a truncated manifest, and is evicted then.
        """
        fs, path = self.fs, self.path(key)
        if not self.caching:
            return False
        with _CACHE_LOCK:
            return self._evict(fs, path)

    @staticmethod
    def _evict(fs, path: str) -> bool:
        try:
            locate = fs._check_file
            fs.pop_from_cache(path)
            local = locate(fs._strip_protocol(path))
            if isinstance(local, tuple):  # filecache returns (detail, fn)
                local = local[-1]
            if isinstance(local, str) and os.path.exists(local):
                os.remove(local)
                return True
        except Exception:  # noqa: BLE001 - eviction is best effort; the caller reports the original error
            return False
        return True

    def close(self) -> None:
        """Release open file handles (the store can still be used: they reopen)."""
        if self.local is not None:
            self.local.close()

    def size(self, key: str = "") -> int:
        if self.local is not None:
            return self.local.size(self.path(key), self.describe(key))
        if self.http is not None:
            return self._retrying("size of", key, lambda: self.http.size(self.path(key)))
        return int(self._retrying("size of", key, lambda: self.fs.size(self.path(key))))

    def _cat(self, key: str, path: str, start: int, end: int) -> bytes:
        if self.local is not None:
            return self.local.read(path, start, end, self.describe(key))
        if self.http is not None:
            try:
                return self._retrying("reading", key, lambda: self.http.cat(path, start, end))
            except RangeIgnored:
                raise self._range_ignored(key, start, end, "more") from None
        with _CACHE_LOCK if self.caching else contextlib.nullcontext():
            return self._retrying("reading", key, lambda: self.fs.cat_file(path, start=start, end=end))

    def read_prefix(self, key: str, length: int) -> bytes:
        """Up to `length` bytes from the start (fewer if the file is shorter)."""
        data = self._cat(key, self.path(key), 0, length)
        self._count(len(data))
        if len(data) > length:
            raise self._range_ignored(key, 0, length, len(data))
        return data

    def read(self, key: str, start: int, end: int) -> bytes:
        """Exactly bytes [start, end) of `key`, or a StorageError saying what came back."""
        return self.read_many([ByteRange(key, start, end)])[0]

    def read_many(self, ranges: list[ByteRange]) -> list[bytes]:
        """Exactly the requested ranges, in order; nearby ranges share one request."""
        if not ranges:
            return []
        wanted = [r for r in ranges if r.length > 0]
        by_range: dict[tuple[str, int, int], bytes] = {}
        if wanted:
            paths = [self.path(r.key) for r in wanted]
            starts = [r.start for r in wanted]
            ends = [r.end for r in wanted]
            most = MERGE_MAX if self.local is None else LOCAL_MERGE_MAX
            m_paths, m_starts, m_ends = merge_ranges(paths, starts, ends, MERGE_GAP, most)
            keys = {self.path(r.key): r.key for r in wanted}
            blocks = self._fetch(m_paths, m_starts, m_ends, keys)
            for r in wanted:
                path = self.path(r.key)
                for p, s, e, block in zip(m_paths, m_starts, m_ends, blocks):
                    if p == path and s <= r.start and r.end <= e:
                        by_range[(r.key, r.start, r.end)] = block[r.start - s : r.end - s]
                        break
        return [by_range.get((r.key, r.start, r.end), b"") for r in ranges]

    def _fetch(self, paths, starts, ends, keys, healed: bool = False) -> list[bytes]:
        if not self.caching:
            return self._fetch_blocks(paths, starts, ends, keys, healed)
        with _CACHE_LOCK:
            return self._fetch_blocks(paths, starts, ends, keys, healed)

    def _fetch_blocks(self, paths, starts, ends, keys, healed: bool) -> list[bytes]:
        def one(i: int) -> bytes:
            return self._cat(keys[paths[i]], paths[i], starts[i], ends[i])

        if len(paths) == 1 or self.local is not None:
            blocks = [one(i) for i in range(len(paths))]
        elif self.http is not None:
            with ThreadPoolExecutor(
                min(HTTP_CONNECTIONS, len(paths)), thread_name_prefix="kformat-http"
            ) as pool:
                blocks = list(pool.map(one, range(len(paths))))
        else:

            def many():
                out = self.fs.cat_ranges(paths, starts, ends, on_error="return")
                for i, item in enumerate(out):
                    if isinstance(item, BaseException):
                        if isinstance(item, FileNotFoundError):
                            raise NotFound(f"{self.describe(keys[paths[i]])}: not found")
                        out[i] = one(i)  # retry that range alone, with backoff
                return out

            blocks = self._retrying("reading", keys[paths[0]], many)
        for p, s, e, block in zip(paths, starts, ends, blocks):
            self._count(len(block))
            if len(block) != e - s:
                key = keys[p]
                if len(block) > e - s:
                    raise self._range_ignored(key, s, e, len(block))
                if not healed and self.caching:
                    return self._heal(paths, starts, ends, keys, key)
                raise StorageError(
                    f"{self.describe(key)}: asked for bytes {s}..{e} ({e - s} bytes), got"
                    f" {len(block)}; the file is shorter than the manifest says (truncated?)"
                )
        return blocks

    def _heal(self, paths, starts, ends, keys, key: str) -> list[bytes]:
        """A short read through a caching layer: its copy is partial (a killed reader's
        download). Read once more, then evict the copy and fetch it again if still short."""
        log.info("%s: short read through the cache; reading it again", self.describe(key))
        try:
            return self._fetch_blocks(paths, starts, ends, keys, healed=True)
        except StorageError:
            if not self.evict_cached(key):
                raise
        return self._fetch_blocks(paths, starts, ends, keys, healed=True)

    def _count(self, n: int) -> None:
        self.counter.add(n)

    def _range_ignored(self, key: str, start: int, end: int, got: int) -> StorageError:
        return StorageError(
            f"{self.describe(key)}: asked for bytes {start}..{end} ({end - start} bytes) but the"
            f" server sent {got}: it ignores HTTP Range requests. Serve the file from a server"
            " that honours Range (nginx, any CDN), or open it as 'simplecache::URL' to download"
            " it once and read locally."
        )


# -- staging: whole objects at any fsspec URL (distributed packing's parts) ---------------------
def _filesystem(url: str, storage_options: dict):
    from fsspec.core import url_to_fs

    return url_to_fs(url, **storage_options)


def put_object(url: str, data: bytes, **storage_options) -> None:
    """Write `data` as the object at `url` (any fsspec URL: a shared path, s3://...)."""
    fs, path = _filesystem(url, storage_options)
    try:
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)
    except Exception as exc:  # noqa: BLE001 - every backend raises its own kinds
        raise StorageError(f"{url}: cannot write ({type(exc).__name__}: {exc})") from None


def get_object(url: str, **storage_options) -> bytes:
    fs, path = _filesystem(url, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise NotFound(f"{url}: not found") from None
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"{url}: cannot read ({type(exc).__name__}: {exc})") from None


def remove_objects(url: str, **storage_options) -> None:
    """Remove the object or prefix at `url`, if it exists (best effort: cleanup only)."""
    fs, path = _filesystem(url, storage_options)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not remove %s: %s", url, exc)
