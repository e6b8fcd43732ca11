"""Filesystem access through fsspec: any URI (`/path`, `file://`, `s3://`, `memory://`).

Writers go through :func:`atomic_write` so that a killed job never leaves a half-written
file under its final name: the bytes land under a temporary name and are moved last.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import Callable, Iterable, Iterator, TypeVar

import fsspec
from fsspec.core import url_to_fs

from operators.errors import CorruptFileError

T = TypeVar("T")
R = TypeVar("R")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI or a plain local path."""
    return url_to_fs(str(uri))


def fresh(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """:func:`filesystem` with its listing cache dropped, for every listing or existence check
    that decides something (skip, commit, publish, recover). fsspec keeps one filesystem
    object per process and s3fs caches directory listings in it; files written by other
    processes (Ray workers committing videos) are then missing from a listing, and even
    ``info``/``open`` of such a file can fail from the cache."""
    filesystem_, path = filesystem(uri)
    filesystem_.invalidate_cache()
    return filesystem_, path


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the scheme of ``base``."""
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def read_bytes(uri: str) -> bytes:
    fs, path = fresh(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_input(uri: str) -> bytes:
    """:func:`read_bytes` for input data: a file that is missing or cannot be read (a
    directory, no permission) is a :class:`CorruptFileError` naming it, which a job
    reports for that input and goes on, unlike a bare ``OSError``."""
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        raise CorruptFileError(uri, "file not found") from None
    except OSError as exc:
        raise CorruptFileError(uri, f"cannot read the file: {exc.strerror or exc}") from None


def exists(uri: str) -> bool:
    fs, path = fresh(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def atomic_write(uri: str, mode: str = "wb") -> Iterator:
    """Open ``uri`` for writing; the file appears under its name only if the block succeeds.

    The bytes go to a local staging file (:func:`atomic_local_path`): moved into place with
    ``os.replace`` on a local filesystem, uploaded after the block on an object store. An
    fsspec file opened on the store directly would not do: closing it uploads what was
    written even when the block raised, leaving half a file (or replacing a good one).
    """
    with atomic_local_path(uri, keep_extension=False) as tmp, open(tmp, mode) as f:
        yield f


@contextlib.contextmanager
def atomic_local_path(uri: str, *, keep_extension: bool = True) -> Iterator[str]:
    """A local path to write ``uri`` through, for writers that only take a path (OpenCV's
    VideoWriter); the file appears under ``uri`` only if the block succeeds.

    The temporary name is hidden (leading ``.``) and keeps the extension, which such writers
    use to pick the format; ``keep_extension=False`` (writers that do not need it) ends it
    in the random suffix, so no reader selecting files by suffix takes it for one. Local targets are moved into place with ``os.replace``; remote
    ones are uploaded from a local temporary directory after the block.
    """
    fs, path = filesystem(uri)
    parent, _, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    token = uuid.uuid4().hex[:8]
    hidden = f".{stem}.tmp-{token}.{ext}" if stem and keep_extension else f".{name}.tmp-{token}"
    local = _is_local(fs)
    workdir = parent if local else tempfile.mkdtemp(prefix="tubeflow-")
    if local and parent:
        os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(workdir, hidden)
    try:
        yield tmp
        if local:
            os.replace(tmp, path)
        else:
            if parent:
                fs.makedirs(parent, exist_ok=True)
            fs.put_file(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if not local:
            shutil.rmtree(workdir, ignore_errors=True)


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_write(uri, "wb") as f:
        f.write(data)


def local_copy(uri: str) -> str:
    """A local filesystem path holding the bytes of ``uri``.

    OpenCV opens containers (mp4, avi, mkv) by path only. Local files are used in place;
    remote ones are downloaded whole into the cache directory (:func:`cache_dir`), named
    by the URI and the remote file's identity (``ukey``: ETag / mtime and size), so a file
    overwritten remotely is fetched again, never served stale. The workers of a node share
    the cache, so a download lands under a temporary name and is renamed into place: a
    copy already handed out is never truncated by another worker fetching the same file.

    The copies are private (directory 0700, files 0600: they are someone's videos) and bounded
    (``TUBEFLOW_CACHE_MAX_GB``, default 20): after a download, the least recently used copies
    are deleted until it fits (see :func:`evict_cache`).
    """
    filesystem_, path = filesystem(uri)
    if _is_local(filesystem_):
        return path
    key = hashlib.sha256(f"{uri}\0{filesystem_.ukey(path)}".encode()).hexdigest()
    ext = os.path.splitext(path)[1]
    ext = ext if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", ext) else ""  # the extension tells FFmpeg the format
    directory = cache_dir()
    cached = os.path.join(directory, key + ext)
    try:
        os.utime(cached)  # a hit: mark it recently used
        return cached
    except FileNotFoundError:
        pass
    tmp = os.path.join(directory, f".{key}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        filesystem_.get_file(path, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, cached)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    evict_cache(keep=cached)
    return cached


RUN_CACHE_ENV = "TUBEFLOW_RUN_CACHE"


def cache_dir() -> str:
    """The directory of local copies, created private (0700): the current run's own
    (``TUBEFLOW_RUN_CACHE``, set by :func:`run_cache`) or else the shared base
    (``TUBEFLOW_CACHE``, default ``~/.cache/tubeflow``)."""
    directory = os.environ.get(RUN_CACHE_ENV) or _cache_base()
    _private_dir(directory)
    return directory


def _cache_base() -> str:
    return os.environ.get("TUBEFLOW_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tubeflow"))


def _private_dir(directory: str) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.stat(directory).st_mode & 0o077:
        os.chmod(directory, 0o700)  # an older release left it world-readable


@contextlib.contextmanager
def run_cache(run_id: str, keep: bool = False) -> Iterator[str]:
    """The block's local copies go to a directory of their own under the cache base, private,
    removed at the end unless ``keep``. Processes started inside the block (a local Ray's
    workers) inherit it through ``TUBEFLOW_RUN_CACHE``; workers of a Ray that was already
    running keep using the shared base (private and bounded, not removed)."""
    base = _cache_base()
    _private_dir(base)
    directory = os.path.join(base, "runs", run_id)
    _private_dir(os.path.dirname(directory))
    _private_dir(directory)
    saved = os.environ.get(RUN_CACHE_ENV)
    os.environ[RUN_CACHE_ENV] = directory
    try:
        yield directory
    finally:
        if saved is None:
            os.environ.pop(RUN_CACHE_ENV, None)
        else:
            os.environ[RUN_CACHE_ENV] = saved
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


CACHE_GRACE_SECONDS = 600.0
"""A copy used this recently is never evicted: a worker may hold its path without having
opened it yet (an open file survives its deletion on POSIX, a path does not)."""


def evict_cache(keep: str | None = None, max_bytes: int | None = None) -> list[str]:
    """Delete the least recently used copies of the remote-file cache until it holds at most
    ``max_bytes`` (default ``TUBEFLOW_CACHE_MAX_GB`` GB, 20); never ``keep``, copies used in
    the last :data:`CACHE_GRACE_SECONDS`, or downloads in progress. Returns what it deleted.
    A nightly job over a bucket would otherwise fill the disk with every video it ever read.
    """
    if max_bytes is None:
        max_bytes = int(float(os.environ.get("TUBEFLOW_CACHE_MAX_GB", "20")) * 1e9)
    entries = []
    with os.scandir(cache_dir()) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                entries.append((stat.st_mtime, stat.st_size, entry.path))
    total = sum(size for _, size, _ in entries)
    deleted, now = [], time.time()
    for used, size, path in sorted(entries):  # oldest use first
        if total <= max_bytes:
            break
        if path == keep or now - used < CACHE_GRACE_SECONDS:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            deleted.append(path)
        total -= size
    return deleted




def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


class StagedFile:
    """Base of writers that build one file at a local path (:func:`atomic_local_path`, held open
    across calls) and publish it under ``uri`` only when closed: ``close()`` publishes,
    ``abort()`` discards, ``with`` does the one or the other. A subclass finishes or releases its
    own handles in ``_finish()`` / ``_release()``; neither runs twice."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self._staging = atomic_local_path(self.uri)
        self.local_path = self._staging.__enter__()

    def _finish(self) -> None:
        """Complete the file at :attr:`local_path` (flush, write indexes, close handles)."""

    def _release(self) -> None:
        """Close the handles of a file that is being discarded."""

    def close(self) -> None:
        """Finish the file and publish it under :attr:`uri`."""
        if self._staging is None:
            return
        self._finish()
        staging, self._staging = self._staging, None
        staging.__exit__(None, None, None)

    def abort(self) -> None:
        """Discard everything written; nothing appears under :attr:`uri`."""
        if self._staging is None:
            return
        with contextlib.suppress(Exception):  # the file is being thrown away: a handle's error changes nothing
            self._release()
        staging, self._staging = self._staging, None
        with contextlib.suppress(RuntimeError):  # the generator re-raises the error it is handed
            staging.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


IO_WORKERS = 16
"""Threads for reading many small objects (markers, fingerprints, per-video documents): I/O
bound, so more threads than cores; on an object store each one is a request in flight."""


def map_io(fn: Callable[[T], R], items: Iterable[T], workers: int = IO_WORKERS) -> Iterator[R]:
    """``fn`` over ``items`` in a pool of threads, results in the order of ``items``; at most
    ``2 × workers`` calls are in flight or waiting to be taken, so memory stays bounded however
    many items there are (``ThreadPoolExecutor.map`` would submit them all first)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tubeflow-io") as pool:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
