"""Opening a container: URL -> store -> layout -> header -> manifest -> validation.

Opening reads the header and manifest only: for a single file one range read of the first
OPEN_READ bytes and a second one only when the manifest is longer; for a sharded directory
one read of manifest.kf.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import BadMagic, FormatError, IntegrityError, KFormatError, StorageError, TruncatedError
from ..format.constants import HEADER_SIZE, MANIFEST_NAME
from ..format.header import decode_header, decode_manifest
from ..format.manifest import BlobRef, Manifest
from ..format.validate import check_extensions, validate_manifest
from .store import Store

OPEN_READ = 16 << 10  # first read of a single file: the header and, usually, the manifest


@dataclass(frozen=True)
class Opened:
    store: Store  # rooted at the file, or at the directory of a sharded manifest
    key: str  # the single file's key, or the manifest's in a sharded directory
    manifest: Manifest
    data_offset: int
    manifest_sha256: str  # hex digest from the header
    manifest_end: int  # where the manifest ends in its file (HEADER_SIZE + its length)
    blobs: list[tuple[BlobRef, str]]  # every blob with its label, from validation


def pinned_digest(pin: str | None) -> bytes | None:
    if pin is None:
        return None
    try:
        digest = bytes.fromhex(pin)
    except (TypeError, ValueError):
        digest = b""
    if len(digest) != 32:
        raise KFormatError(f"manifest_sha256 must be 64 hex digits, got {pin!r}")
    return digest


def open_url(url: str, max_manifest: int, manifest_sha256: str | None, **storage_options) -> Opened:
    """Open a single file, a sharded directory, or a directory's manifest.kf.

    A directory is recognised without reading data: by a trailing "/", or by asking the
    filesystem when that is free (local, memory, object stores). On HTTP, where asking
    would download the URL, a name ending in ".kf" is a file and anything else is tried
    as a file first and then as a directory (one extra request: end directory URLs with
    "/" to save it).
    """
    url = str(url)
    store = Store.from_url(url, **storage_options)
    try:
        return _open_store(store, url, max_manifest, pinned_digest(manifest_sha256))
    except BaseException:
        store.close()
        raise


def _open_store(store: Store, url: str, max_manifest: int, pin: bytes | None) -> Opened:
    directory = True if url.endswith("/") else store.is_dir()
    if directory:
        return _open_key(store, MANIFEST_NAME, max_manifest, pin)
    if directory is False or PurePosixPath(store.root).name.endswith(".kf"):
        return _open_key(store, "", max_manifest, pin)
    try:
        return _open_key(store, "", max_manifest, pin)
    except (BadMagic, StorageError) as exc:  # an HTML listing, or nothing: try the directory
        try:
            return _open_key(store, MANIFEST_NAME, max_manifest, pin)
        except KFormatError:
            raise exc from None


def _open_key(store: Store, key: str, max_manifest: int, pin: bytes | None) -> Opened:
    try:
        return _read(store, key, max_manifest, pin)
    except (TruncatedError, BadMagic):
        # A cached copy cut short (or left empty) by a killed reader: drop it, read again.
        if store.evict_cached(key):
            return _read(store, key, max_manifest, pin)
        raise


def _read(store: Store, key: str, max_manifest: int, pin: bytes | None) -> Opened:
    source = store.describe(key)
    # A sharded manifest is a file of its own: read it whole, in one request. A single
    # file starts with a guess; the rest of a longer manifest is a second read.
    first = HEADER_SIZE + max_manifest if key == MANIFEST_NAME else OPEN_READ
    head = store.read_prefix(key, first)
    header = decode_header(head, source, max_manifest)
    if pin is not None and header.manifest_sha256 != pin:
        raise IntegrityError(
            f"{source}: manifest SHA-256 is {header.manifest_sha256.hex()}, pinned {pin.hex()}: not the"
            " expected model"
        )
    end = HEADER_SIZE + header.manifest_length
    body = head[HEADER_SIZE:end]
    if len(body) < header.manifest_length and len(head) == first:
        try:
            body += store.read(key, len(head), end)
        except StorageError as exc:
            raise TruncatedError(f"{source}: truncated inside the manifest ({exc})") from None
    manifest = decode_manifest(body, header, source)
    check_extensions(manifest, source)
    if manifest.layout == "sharded":
        if header.data_offset:
            raise FormatError(f"{source}: a sharded manifest has a data region")
        if key != MANIFEST_NAME or store.root.endswith(MANIFEST_NAME):
            # Opened as the manifest file itself: shards live next to it.
            parent = str(PurePosixPath(store.path(key)).parent)
            url = store.describe(key).rsplit("/", 1)[0]
            store.close()
            store, key = store.child(parent, url), PurePosixPath(store.path(key)).name
    elif not header.data_offset:
        raise FormatError(f"{source}: a single-file container without a data region")
    blobs = validate_manifest(manifest, source)
    end = HEADER_SIZE + header.manifest_length
    return Opened(store, key, manifest, header.data_offset, header.manifest_sha256.hex(), end, blobs)
