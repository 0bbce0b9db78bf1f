"""Which storage failures are worth a retry: server errors, throttling, timeouts and dropped
connections; never a missing file or a permission refused."""

from __future__ import annotations


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    text = f"{type(exc).__name__} {exc}"
    transient_words = (
        "Timeout",
        "ServerDisconnected",
        "ClientPayloadError",
        "ClientOSError",
        "ConnectionReset",
        "Connection reset",
        "ConnectionError",
        "IncompleteRead",
        " 500",
        " 502",
        " 503",
        " 504",
    )
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(w in text for w in transient_words)
