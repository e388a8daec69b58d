"""User text files (recipes, labels, ranges, configs) read with one-line errors."""

from __future__ import annotations

from pathlib import Path

from quantbuild.errors import QuantbuildError, Where


def read_utf8(
    path: Path, error: type[QuantbuildError], what: str = "file", max_bytes: int | None = None
) -> str:
    """The text of `path`. A missing, unreadable, oversized or non-UTF-8 file raises `error`
    naming the file (and line:column of the first byte that is not UTF-8)."""
    name = str(path)
    try:
        if max_bytes is not None:
            size = path.stat().st_size
            if size > max_bytes:
                raise error(
                    f"{size / (1 << 20):.1f} MB; a {what} is at most {max_bytes >> 20} MB "
                    f"(is this file a {what}?)",
                    name,
                )
        data = path.read_bytes()
    except FileNotFoundError:
        raise error("file not found", name) from None
    except IsADirectoryError:
        raise error(f"is a folder, not a {what}; name a file", name) from None
    except OSError as err:
        raise error(f"cannot read the {what} ({err.strerror or err})", name) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        binary = b"\0" in data[:4096]
        raise error(
            f"not a text {what}: this is binary data"
            if binary
            else f"not UTF-8 text (byte 0x{data[err.start]:02x}); save the {what} as UTF-8",
            Where(name, line, column) if not binary else name,
        ) from None
