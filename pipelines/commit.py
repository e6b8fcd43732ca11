"""The per-video output commit protocol: write aside, commit last, recover after a crash.

A labelling run writes each video's outputs (segments table partition, PNGs, overlay,
per-video metric sums) under a staging prefix ``OUT/_staging/<run>/<video>/`` that mirrors
the final layout; nothing under the final names changes while the video is processed.
When every output of the video exists, :func:`commit_video` publishes them:

1. write an *intent* record ``_commits/<video>.pending.json`` naming every file the old and
   the new output own;
2. delete the old commit marker (from here the video counts as not committed);
3. delete old files the new output does not replace;
4. move the staged files to their final names;
5. write the new commit marker ``_commits/<video>.json`` (atomically) — the commit point;
6. delete the intent record and the staging prefix.

A run killed anywhere leaves either the old complete output (killed before 2: the old
marker still stands), or files without a marker plus an intent record naming them (killed
in 2–5), or a new marker with a stale intent (killed in 6). :func:`recover`, run before
every labelling run, deletes what an intent names when no current marker stands, and stale
intents and staging prefixes otherwise; the rerun then reprocesses every video without a
marker. So a rerun ends with exactly one complete output per video. Readers trust a
video's outputs only when its marker exists.

The marker records what the output was made from (input fingerprint, config hash, model
checksums), so a rerun skips a video whose marker matches (:func:`is_current`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Callable
from operators import fs
from operators.ids import id_of_key, video_key

COMMITS_DIR = "_commits"
STAGING_DIR = "_staging"
MARKER_SUFFIX = ".json"
PENDING_SUFFIX = ".pending.json"

FaultHook = Callable[[str], None]
"""Called with the name of each step of :func:`commit_video` as it is reached; tests raise
from it to simulate a crash between two writes."""


@dataclass(frozen=True)
class OutputLayout:
    """Where everything of a labelling run lives under the output root ``root``."""

    root: str

    def uri(self, relative: str) -> str:
        return fs.join(self.root, relative)

    def run_staging(self, run_id: str) -> str:
        """Everything run ``run_id`` stages; no other run reads or deletes it while it lives."""
        return fs.join(self.root, STAGING_DIR, run_id)

    def staging(self, run_id: str, video_id: str) -> str:
        """Where ``video_id``'s outputs are staged (they mirror the final layout)."""
        return fs.join(self.run_staging(run_id), "videos", video_key(video_id))

    def marker_uri(self, video_id: str) -> str:
        return fs.join(self.root, COMMITS_DIR, video_key(video_id) + MARKER_SUFFIX)

    def pending_uri(self, video_id: str) -> str:
        return fs.join(self.root, COMMITS_DIR, video_key(video_id) + PENDING_SUFFIX)


@dataclass
class CommitMarker:
    """What a committed video's output is made of, and the files it owns (relative to the root)."""

    video_id: str
    input_fingerprint: str
    config_hash: str
    model_checksums: dict
    counts: dict
    files: list[str]
    run_id: str
    status: str = "ok"
    committed_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "CommitMarker":
        return cls(**json.loads(data))


def read_marker(layout: OutputLayout, video_id: str) -> CommitMarker | None:
    """The video's commit marker, or None when it is not committed (a damaged marker counts as none)."""
    try:
        return CommitMarker.from_json(fs.read_bytes(layout.marker_uri(video_id)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # half a JSON cannot happen (atomic writes), a foreign file can
        return None


def is_current(marker: CommitMarker | None, input_fingerprint: str, config_hash: str) -> bool:
    """Whether ``marker`` is an output of this input under this configuration."""
    return (marker is not None and marker.status == "ok" and marker.input_fingerprint == input_fingerprint
            and marker.config_hash == config_hash)


def _commit_records(layout: OutputLayout) -> list[tuple[str, str]]:
    """(video_id, suffix) of every record under ``_commits/``, from a fresh listing (a cached
    one would miss what other processes committed); files this layout did not write are skipped."""
    filesystem, path = fs.fresh(layout.uri(COMMITS_DIR))
    if not filesystem.exists(path):
        return []
    out = []
    for name in filesystem.ls(path, detail=False):
        key, dot, suffix = name.rstrip("/").rsplit("/", 1)[-1].partition(".")  # keys hold no '.'
        video_id = id_of_key(key)
        if video_id is not None and "." + suffix in (MARKER_SUFFIX, PENDING_SUFFIX):
            out.append((video_id, "." + suffix))
    return out


def committed_markers(layout: OutputLayout) -> dict[str, CommitMarker]:
    """video_id → marker of every committed video under the root (fresh listing; the markers
    are read in parallel, :func:`operators.fs.map_io`: on an object store each is a request)."""
    committed = sorted(video_id for video_id, suffix in _commit_records(layout) if suffix == MARKER_SUFFIX)
    markers = fs.map_io(lambda video_id: read_marker(layout, video_id), committed)
    return {video_id: marker for video_id, marker in zip(committed, markers)
            if marker is not None and marker.video_id == video_id}


def staged_files(staging_uri: str) -> list[str]:
    """Files under a staging prefix, relative to it (hidden temporaries of writers excluded)."""
    filesystem, path = fs.fresh(staging_uri)
    path = path.rstrip("/")
    if not filesystem.exists(path):
        return []
    relative = (f[len(path):].lstrip("/") for f in filesystem.find(path))
    return sorted(r for r in relative if r and not any(p.startswith(".") for p in r.split("/")))


def _move(src: str, dst: str) -> None:
    filesystem, src_path = fs.filesystem(src)
    _, dst_path = fs.filesystem(dst)
    if fs._is_local(filesystem):
        os.makedirs(os.path.dirname(dst_path), exist_ok=True)
        os.replace(src_path, dst_path)  # atomic per file
    else:
        filesystem.mv(src_path, dst_path)


def _remove(uri: str) -> None:
    filesystem, path = fs.fresh(uri)
    try:
        if filesystem.isdir(path):
            filesystem.rm(path, recursive=True)
        else:
            filesystem.rm(path)
    except FileNotFoundError:
        pass


def remove_tree(uri: str) -> None:
    """Delete a prefix and everything under it (absent: nothing to do)."""
    filesystem, path = fs.fresh(uri)
    if fs._is_local(filesystem):
        shutil.rmtree(path, ignore_errors=True)
    elif filesystem.exists(path):
        filesystem.rm(path, recursive=True)


def commit_video(layout: OutputLayout, video_id: str, staging_uri: str, marker: CommitMarker,
                 fault: FaultHook | None = None, guard: Callable[[], None] | None = None) -> CommitMarker:
    """Publish the staged outputs of ``video_id`` and write its marker last (see module doc).

    ``marker.files`` is filled in from the staging prefix. ``guard`` is called before the
    first change and before the marker is written; it raises when this run may no longer
    write the output (its lease is lost, :func:`pipelines.lease.Lease.guard`). Returns the
    marker written.
    """
    fault = fault or (lambda step: None)
    guard = guard or (lambda: None)
    files = staged_files(staging_uri)
    old = read_marker(layout, video_id)
    old_files = [f for f in old.files if isinstance(f, str) and _inside_root(f)] if old else []
    guard()
    fs.write_bytes(layout.pending_uri(video_id), json.dumps({"video_id": video_id,
                                                             "files": sorted(set(files) | set(old_files))}).encode())
    fault("intent_written")
    _remove(layout.marker_uri(video_id))
    fault("old_marker_removed")
    for relative in sorted(set(old_files) - set(files)):
        _remove(layout.uri(relative))
    fault("old_files_removed")
    for n, relative in enumerate(files):
        _move(fs.join(staging_uri, relative), layout.uri(relative))
        fault(f"moved:{n}")
    marker.files = files
    guard()
    fs.write_bytes(layout.marker_uri(video_id), marker.to_json())
    fault("marker_written")
    _remove(layout.pending_uri(video_id))
    remove_tree(staging_uri)
    return marker


def remove_tree_if_empty(uri: str) -> None:
    """Delete a local directory when it is empty (object stores have no empty directories)."""
    filesystem, path = fs.fresh(uri)
    if fs._is_local(filesystem):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def remove_run_staging(layout: OutputLayout, run_id: str) -> None:
    """Delete what run ``run_id`` staged (and ``_staging/`` itself when no other run left anything)."""
    remove_tree(layout.run_staging(run_id))
    remove_tree_if_empty(layout.uri(STAGING_DIR))


def publish_staged(staging_uri: str, root: str, last: tuple[str, ...] = ()) -> list[str]:
    """Move every file staged under ``staging_uri`` to the same relative name under ``root``,
    the files named in ``last`` (e.g. an index such as ``pred.json``) after all others. For
    jobs whose whole output is one unit (``track``); labelling commits per video instead."""
    files = staged_files(staging_uri)
    for relative in sorted(files, key=lambda r: (r in last, r)):
        _move(fs.join(staging_uri, relative), fs.join(root, relative))
    return files


def _inside_root(relative: str) -> bool:
    """Whether a path from a record (pending intent, marker) stays under the output root: such
    records are files in a shared store, and deleting what one names must never reach outside."""
    parts = relative.split("/")
    return bool(relative) and "\\" not in relative and all(p not in ("", ".", "..") for p in parts)


def recover(layout: OutputLayout, run_id: str | None = None) -> list[str]:
    """Undo or finish commits a killed run left behind; returns the videos whose partial
    output was deleted. Call it while holding the output's lease (:mod:`pipelines.lease`), so
    no other run is alive: the staging of every run but ``run_id`` is then a dead run's."""
    undone = []
    for video_id, suffix in _commit_records(layout):
        if suffix == PENDING_SUFFIX and undo_commit(layout, video_id):
            undone.append(video_id)
    filesystem, path = fs.fresh(layout.uri(STAGING_DIR))
    if run_id is None:
        remove_tree(layout.uri(STAGING_DIR))
    elif filesystem.exists(path):
        for name in filesystem.ls(path, detail=False):
            if name.rstrip("/").rsplit("/", 1)[-1] != run_id:
                remove_tree(layout.uri(f"{STAGING_DIR}/{name.rstrip('/').rsplit('/', 1)[-1]}"))
    return undone


def undo_commit(layout: OutputLayout, video_id: str) -> bool:
    """Finish what a commit of ``video_id`` killed midway left: with no marker standing, delete
    every file its intent record names (returns True); then drop the intent. Also used by a run
    whose commit task died while the run goes on (nothing else writes that video meanwhile)."""
    pending = layout.pending_uri(video_id)
    undone = False
    if read_marker(layout, video_id) is None:  # killed between steps 2 and 5
        try:
            listed = json.loads(fs.read_bytes(pending)).get("files", [])
        except FileNotFoundError:
            return False  # no commit was under way
        except ValueError:
            listed = []
        for relative in listed:
            if isinstance(relative, str) and _inside_root(relative):
                _remove(layout.uri(relative))
        undone = True
    _remove(pending)
    return undone
