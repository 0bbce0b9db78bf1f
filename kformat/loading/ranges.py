"""Byte ranges of a read, merged into fewer requests: ranges of the same path closer than a
gap become one block, never larger than a cap. (fsspec has the same helper; having our own
keeps fsspec out of a local load, where it cost 11 MiB and tens of milliseconds to import.)"""

from __future__ import annotations


def merge_ranges(
    paths: list[str], starts: list[int], ends: list[int], max_gap: int, max_block: int
) -> tuple[list[str], list[int], list[int]]:
    """The blocks covering every (path, start, end), sorted by path and start: a range joins
    the block before it when it starts at most `max_gap` bytes after the block's end and the
    block would stay within `max_block` bytes (a range alone may be larger)."""
    out_paths: list[str] = []
    out_starts: list[int] = []
    out_ends: list[int] = []
    for path, start, end in sorted(zip(paths, starts, ends)):
        if (
            out_paths
            and out_paths[-1] == path
            and start - out_ends[-1] <= max_gap
            and max(end, out_ends[-1]) - out_starts[-1] <= max_block
        ):
            out_ends[-1] = max(out_ends[-1], end)
            continue
        out_paths.append(path)
        out_starts.append(start)
        out_ends.append(end)
    return out_paths, out_starts, out_ends
