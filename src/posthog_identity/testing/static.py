"""The sink's `/static/` files: posthog-js's own scripts, served from a directory."""

from __future__ import annotations

import io
import mimetypes
import re
from pathlib import Path

from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

__all__ = ["file_response", "static_file"]

# posthog-js asks for `/static/<its version>/surveys.js` first.
_VERSION_SEGMENT = re.compile(r"v?\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?")
# werkzeug adds `; charset=utf-8` to the text and script types.
_MIMETYPES = {
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".cjs": "application/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".css": "text/css",
    ".html": "text/html",
    ".txt": "text/plain",
    ".wasm": "application/wasm",
}


def static_file(root: Path, relative: str) -> Path | None:
    """The file under `root` that a (decoded) `/static/` path names, if any.

    `..`, `.`, empty segments (so absolute paths) and backslashes are refused,
    and so is any file that resolves, through symlinks, outside `root`. A
    leading version segment (`1.449.2/surveys.js`) is dropped when the
    versioned file does not exist.
    """
    parts = relative.split("/")
    if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
        return None
    candidates = [parts]
    if len(parts) > 1 and _VERSION_SEGMENT.fullmatch(parts[0]):
        candidates.append(parts[1:])
    for candidate in candidates:
        try:
            path = root.joinpath(*candidate).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            continue
        if path.is_relative_to(root) and path.is_file():
            return path
    return None


def _mimetype(path: Path) -> str:
    known = _MIMETYPES.get(path.suffix.lower())
    if known is not None:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def file_response(request: Request, path: Path) -> Response | None:
    """A file's response, conditional (ETag, Last-Modified, ranges); None if it is gone."""
    try:
        content = path.read_bytes()
        stat = path.stat()
    except OSError:  # gone since it was found
        return None
    # Served from memory, not from an open file: werkzeug's server drains the
    # request socket before it closes a body, and a client that resets the
    # connection makes that raise, so a file-backed body was never closed.
    response = Response(
        wrap_file(request.environ, io.BytesIO(content)),
        mimetype=_mimetype(path),
        direct_passthrough=True,
    )
    response.content_length = len(content)
    response.last_modified = stat.st_mtime  # type: ignore[assignment]
    response.set_etag(f"{stat.st_mtime_ns:x}-{len(content):x}")
    response.cache_control.no_cache = True
    response.headers["X-Content-Type-Options"] = "nosniff"
    response = response.make_conditional(request, accept_ranges=True, complete_length=len(content))
    # make_conditional adds a Date; the server adds its own, which is the one to keep.
    del response.headers["Date"]
    return response
