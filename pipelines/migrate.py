"""Outputs of an earlier release: migrate them in place when nothing has to move, else refuse.

The id rule (:mod:`operators.ids`) changed how ids map to file names: the release before it
named files with ``urllib.parse.quote(video_id)`` (upper-case letters, ``.`` and ``~`` kept) and
PNGs with the raw image id. An output root now records its layout in ``_layout.json``. A
``label``/``nightly`` run on a root without it that holds commit markers checks every committed
video: when all its file names are already what this release would write (ids in lower case
letters, digits, ``_`` and ``-``, the common case), the root is adopted as is (the record is
written, nothing moves); otherwise the run refuses with one line saying how to rebuild, and
changes nothing — never a mix of two layouts under one root.
"""
from __future__ import annotations

import json
from urllib.parse import quote

from operators import fs
from operators.errors import TubeflowError
from operators.ids import IdError, id_of_key, printable, video_key
from pipelines.commit import COMMITS_DIR, MARKER_SUFFIX, PENDING_SUFFIX, OutputLayout

LAYOUT_FILE = "_layout.json"
LAYOUT_VERSION = 2
"""1: the first release (quote-named files, implicit); 2: the id rule of operators/ids.py."""


class OldLayoutError(TubeflowError):
    """The output root was written by an earlier release and cannot be adopted as is."""

    exit_code = 2


def _legacy_name_is_current(name: str) -> bool:
    """Whether a file name component written by the first release is what this release writes."""
    stem = name.split(".", 1)[0]
    stem = stem[len("video_id="):] if stem.startswith("video_id=") else stem
    return stem.startswith("part-") or id_of_key(stem) is not None


def check_layout_version(layout: OutputLayout) -> None:
    """Adopt or refuse an output root of an earlier release (see module doc); record the layout
    of a new root. Call it while holding the root's lease, before anything is written."""
    record = layout.uri(LAYOUT_FILE)
    if fs.exists(record):
        try:
            version = json.loads(fs.read_bytes(record)).get("layout")
        except ValueError:
            version = None
        if version != LAYOUT_VERSION:
            raise OldLayoutError(f"{layout.root}: output layout {version!r} is not this release's "
                                 f"({LAYOUT_VERSION}); label into a new --output")
        return
    filesystem, path = fs.fresh(layout.uri(COMMITS_DIR))
    names = [n.rstrip("/").rsplit("/", 1)[-1] for n in filesystem.ls(path, detail=False)] \
        if filesystem.exists(path) else []
    stale = []
    for name in names:
        if name.endswith(PENDING_SUFFIX):
            stale.append(f"an interrupted commit ({name})")
            continue
        if not name.endswith(MARKER_SUFFIX):
            continue
        try:
            marker = json.loads(fs.read_bytes(fs.join(layout.uri(COMMITS_DIR), name)))
            video_id, files = str(marker["video_id"]), list(marker["files"])
        except (ValueError, KeyError, TypeError, FileNotFoundError):
            stale.append(f"an unreadable marker ({name})")
            continue
        try:
            same_key = video_key(video_id) == quote(video_id, safe="")
        except IdError:
            same_key = False
        if not same_key or not all(_legacy_name_is_current(part) for f in files for part in f.split("/")[1:]):
            stale.append(f"video {printable(video_id)!r}")
    if stale:
        raise OldLayoutError(
            f"{layout.root}: written by an earlier tubeflow whose file names differ for {len(stale)} video(s) "
            f"(e.g. {stale[0]}); nothing was changed. Rebuild it: label into a new --output (or delete "
            f"{layout.root} and rerun)")
    fs.write_bytes(record, json.dumps({"layout": LAYOUT_VERSION, "ids": "operators/ids.py path_key"}).encode())
