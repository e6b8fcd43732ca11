"""One writer per output root: a lease stored in the output itself.

A ``label`` or ``nightly`` run takes the lease ``OUT/_lease.json`` before it changes anything
under ``OUT`` (before recovery, before Ray starts), renews it every ``ttl / 3`` seconds from a
thread while it lives, and releases it at the end. A second run on the same output finds a live
lease and refuses with one line naming the holder (run id, host, pid, command) and since when
(:class:`LeaseHeldError`, exit code 75, "try again later"). A lease whose holder died expires:
at once when the holder ran on this host and its process is gone, else ``ttl`` seconds after
its last renewal (``TUBEFLOW_LEASE_SECONDS``, default 60); the next run takes it over.

A killed driver does not take its workers with it: the Ray it started locally runs each worker
in a process group of its own, and those workers go on (for up to a minute, measured) writing
the dead run's staging and even committing. So a run tags every process it starts with its run
id (the environment variable ``TUBEFLOW_RUN_ID``, inherited by Ray's processes), and a run
taking over the lease of a holder that died on this host first stops (SIGKILL) every process
still carrying the holder's run id, before it recovers anything. On a cluster reached with
``--address``, Ray itself stops a dead driver's workers.

Every change of the lease is a compare-and-set against the version the writer read, so two
runs racing for one lease cannot both win:

* **local files** (and NFS with working ``flock``): the read-compare-write runs under
  ``flock`` of ``OUT/_lease.lock`` (held for a few milliseconds, never across the run);
* **S3**: a conditional ``PutObject`` — ``If-None-Match: *`` to create the lease,
  ``If-Match: <ETag>`` to renew, take over or release it. AWS S3 guarantees these atomically
  (since 2024). The moto server used in the tests implements both headers (a 412 on a mismatch)
  but checks and writes without a lock, so there the test proves the protocol, not atomicity;
* **other fsspec stores** (GCS, Azure, memory): written, then read back to check that this run
  won; two runs starting within the same second can both believe they won. Use one scheduler
  per output root there, or S3/local files.

Fencing: a holder that stops renewing (paused, partitioned) loses the lease when it expires; its
renewal then fails and the run stops committing — every commit checks first that the store still
names this run as the holder (:meth:`Lease.check_holder`, called by the commit protocol right
before the commit marker is written). The window left is the time between that check and the
marker write (milliseconds), against a ``ttl`` of a minute.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from operators import fs
from operators.errors import TubeflowError

LEASE_NAME = "_lease.json"
LOCK_NAME = "_lease.lock"
RUN_ENV = "TUBEFLOW_RUN_ID"  # set in the holder's environment: every process it starts carries it


def default_ttl() -> float:
    return float(os.environ.get("TUBEFLOW_LEASE_SECONDS", "60"))


class LeaseHeldError(TubeflowError):
    """The output root is held by another live run."""

    exit_code = 75  # EX_TEMPFAIL: the command is fine, the output is busy; try again later


class LeaseLostError(TubeflowError):
    """This run no longer holds its output's lease (it expired and another run took it)."""


class _Conflict(Exception):
    """A compare-and-set found another version than the one expected."""


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    host: str
    pid: int
    user: str
    command: str
    acquired_at: float
    renewed_at: float
    expires_at: float
    released: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "LeaseRecord | None":
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None  # a damaged or foreign lease file holds nothing

    def live(self, now: float) -> bool:
        """Whether the holder may still be writing: not released, not expired, and — when it ran
        on this host — its process still exists."""
        if self.released or self.expires_at <= now:
            return False
        return not self.died_here()

    def died_here(self) -> bool:
        """Whether the holder ran on this host and its process is gone."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self, now: float) -> str:
        since = _dt.datetime.fromtimestamp(self.acquired_at, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"run {self.run_id} ({self.command or 'tubeflow'}, host {self.host}, pid {self.pid}, user {self.user}) "
                f"since {since}; renewed {max(0.0, now - self.renewed_at):.0f} s ago, expires in "
                f"{max(0.0, self.expires_at - now):.0f} s unless renewed")


# ----------------------------------------------------------------------------- stores
class _LocalStore:
    """Compare-and-set under ``flock`` of a lock file beside the lease; version = SHA-256."""

    def __init__(self, path: str):
        self.path = path
        self.lock_path = os.path.join(os.path.dirname(path), LOCK_NAME)

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _read(self) -> tuple[bytes | None, str | None]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    def read(self) -> tuple[bytes | None, str | None]:
        with self._locked():
            return self._read()

    def write(self, data: bytes, expect: str | None) -> str:
        with self._locked():
            if self._read()[1] != expect:
                raise _Conflict()
            fs.write_bytes(self.path, data)
            return hashlib.sha256(data).hexdigest()


class _S3Store:
    """Conditional PutObject (If-None-Match / If-Match); version = ETag."""

    def __init__(self, filesystem, path: str):
        self.fs = filesystem
        self.bucket, self.key, _ = filesystem.split_path(path)

    def read(self) -> tuple[bytes | None, str | None]:
        from fsspec.asyn import sync

        async def get():
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            async with response["Body"] as body:
                return await body.read(), response["ETag"]

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None, None

    def write(self, data: bytes, expect: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        try:
            response = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except (OSError, FileNotFoundError) as exc:
            code = getattr(getattr(exc, "__cause__", None), "response", {}).get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or \
                    isinstance(exc, (FileExistsError, FileNotFoundError)):
                raise _Conflict() from None
            raise
        self.fs.invalidate_cache(f"{self.bucket}/{self.key}")  # this object only: no listing is refreshed here
        return response["ETag"]


class _BestEffortStore:
    """Stores without conditional writes: write, then read back (see module doc)."""

    def __init__(self, uri: str):
        self.uri = uri

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            data = fs.read_bytes(self.uri)
        except FileNotFoundError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    def write(self, data: bytes, expect: str | None) -> str:
        if self.read()[1] != expect:
            raise _Conflict()
        fs.write_bytes(self.uri, data)
        if self.read()[0] != data:
            raise _Conflict()
        return hashlib.sha256(data).hexdigest()


def _store(uri: str):
    filesystem, path = fs.filesystem(uri)
    protocol = filesystem.protocol if isinstance(filesystem.protocol, str) else filesystem.protocol[0]
    if protocol in ("file", "local"):
        return _LocalStore(path)
    if protocol in ("s3", "s3a"):
        return _S3Store(filesystem, path)
    return _BestEffortStore(uri)


# ----------------------------------------------------------------------------- the lease
class Lease:
    """The lease of one run on one output root; a context manager (acquire … release)."""

    def __init__(self, root: str, run_id: str, command: str = "", ttl: float | None = None):
        self.root = str(root).rstrip("/")
        self.uri = fs.join(self.root, LEASE_NAME)
        self.run_id = run_id
        self.command = command or " ".join(os.path.basename(a) for a in sys.argv[:2])
        self.ttl = default_ttl() if ttl is None else float(ttl)
        self._store = _store(self.uri)
        self._version: str | None = None
        self._acquired_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str = ""
        self.stopped: list[int] = []  # processes of a killed holder that this run stopped on taking over
        self._environment: str | None = None

    def _record(self, now: float, released: bool = False) -> LeaseRecord:
        return LeaseRecord(self.run_id, socket.gethostname(), os.getpid(), getpass.getuser(), self.command,
                           self._acquired_at, now, now + self.ttl, released)

    def acquire(self) -> "Lease":
        """Take the lease, or raise :class:`LeaseHeldError` naming its live holder."""
        for _ in range(3):
            data, version = self._store.read()
            now = time.time()
            holder = LeaseRecord.from_json(data) if data is not None else None
            if holder is not None and holder.run_id != self.run_id and holder.live(now):
                raise LeaseHeldError(f"{self.root}: in use by {holder.describe(now)}")
            if holder is not None and holder.run_id != self.run_id and holder.died_here():
                self.stopped += stop_run_processes(holder.run_id)
            self._acquired_at = now
            try:
                self._version = self._store.write(self._record(now).to_json(), version)
            except _Conflict:
                continue  # another run changed the lease between our read and write: look again
            self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.run_id}", daemon=True)
            self._thread.start()
            self._environment = os.environ.get(RUN_ENV)
            os.environ[RUN_ENV] = self.run_id  # inherited by the Ray this run starts (see module doc)
            return self
        data, _ = self._store.read()
        holder = LeaseRecord.from_json(data) if data else None
        raise LeaseHeldError(f"{self.root}: in use by "
                             f"{holder.describe(time.time()) if holder else 'another run (the lease keeps changing)'}")

    def renew(self) -> None:
        """Extend the lease by ``ttl``; on a conflict the lease is lost (:attr:`lost`)."""
        if self.lost:
            return
        try:
            self._version = self._store.write(self._record(time.time()).to_json(), self._version)
        except _Conflict:
            data, _ = self._store.read()
            holder = LeaseRecord.from_json(data) if data else None
            self.lost = (f"{self.root}: run {self.run_id} lost its lease"
                         + (f" to {holder.describe(time.time())}" if holder else ""))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except OSError:  # the store is unreachable for a moment: retry at the next tick
                continue

    def check_holder(self) -> None:
        """Raise :class:`LeaseLostError` unless the store still names this run as the live holder."""
        check_holder(self.root, self.run_id)

    def release(self) -> None:
        if os.environ.get(RUN_ENV) == self.run_id:
            if self._environment is None:
                del os.environ[RUN_ENV]
            else:
                os.environ[RUN_ENV] = self._environment
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and self._version is not None:
            with contextlib.suppress(_Conflict, OSError):
                self._store.write(self._record(time.time(), released=True).to_json(), self._version)
        self._version = None

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *_) -> None:
        self.release()


def check_holder(root: str, run_id: str) -> None:
    """Raise :class:`LeaseLostError` unless ``root``'s lease names ``run_id`` as its live holder
    (a fresh read of the store: callable from any process, e.g. a Ray task about to commit)."""
    data, _ = _store(fs.join(str(root).rstrip("/"), LEASE_NAME)).read()
    holder = LeaseRecord.from_json(data) if data is not None else None
    now = time.time()
    if holder is None or holder.run_id != run_id or holder.released or holder.expires_at <= now:
        raise LeaseLostError(f"{root}: run {run_id} no longer holds the output's lease"
                             + (f"; the lease names {holder.describe(now)}" if holder else ""))


def run_processes(run_id: str) -> list[int]:
    """This user's live processes on this host that carry ``run_id`` in their environment
    (empty where there is no ``/proc``; a zombie's environment reads empty)."""
    needle = f"{RUN_ENV}={run_id}".encode()
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    environment = f.read()
            except OSError:  # gone meanwhile, or another user's
                continue
            if needle in environment.split(b"\0"):
                found.append(int(name))
    return found


def stop_run_processes(run_id: str, wait: float = 10.0) -> list[int]:
    """SIGKILL every process still carrying ``run_id`` (a killed holder's Ray workers) and wait
    until none is left; returns their pids. Raises :class:`LeaseHeldError` when one survives."""
    import signal

    stopped: list[int] = []
    deadline = time.monotonic() + wait
    while pids := run_processes(run_id):
        if time.monotonic() > deadline:
            raise LeaseHeldError(f"processes of the killed run {run_id} do not stop (pids "
                                 f"{', '.join(map(str, pids))}); stop them and run again")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        stopped += [p for p in pids if p not in stopped]
        time.sleep(0.05)
    return stopped


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
