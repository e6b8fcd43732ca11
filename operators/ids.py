"""The one rule from ids (video ids, image ids) to path components.

Ids come from manifests, GT JSON and file names nobody cleaned: ``../../x``, ``/etc``,
``a\\b``, ``.hidden``, ``%2e%2e``, ``Ä``, ``line\\nbreak``, ``Video`` next to ``video``. Every
writer and every reader of tubeflow that puts an id into a path (segments partitions, PNG
names, annotations, overlays, metric tables, commit markers, staging) goes through
:func:`path_key`; the original id stays in the data (segments table, pred.json, markers).

The key is the id's UTF-8 bytes, each byte outside ``[a-z0-9_-]`` written ``%XX`` (two
upper-case hex digits) — the percent escape Hive and pyarrow's hive partitioning decode, so
``video_key=<key>`` partitions read back as the original id. Hence a key

* is one safe path component: no separator of either kind, never ``.``/``..``, never
  starts with a dot (hidden files are how writers stage temporaries), no control
  character, no Windows device name (``con``, ``nul``, ``com1`` … escape their first letter);
* is reversible (:func:`id_of_key`) and so collision-free;
* stays collision-free on a case-insensitive file system: letters appear in a key only in
  lower case, and upper case only as hex digits right after ``%``, which the encoder always
  writes in upper case — so two different keys never differ by case alone;
* holds no ``.``: a suffix (``.json``, ``.png``, ``.pending.json``) can never be mistaken
  for part of the id.

Ids that cannot be honoured are an :class:`IdError` naming the id: empty, not a string of
valid Unicode, or a key longer than the limit (a file name is at most 255 bytes on common
file systems, and the key carries prefixes and suffixes).
"""
from __future__ import annotations

import re
import string

from operators.errors import TubeflowError

MAX_VIDEO_KEY = 180
"""Longest key of a video id: ``video_key=<key>``, ``<key>.pending.json`` and the default image
ids ``<video id>_NNNNNN`` (key + 7) all stay well under 255 bytes."""
MAX_IMAGE_KEY = 200
"""Longest key of an image id (``pan_pred/<key>.png``)."""

_SAFE = frozenset((string.ascii_lowercase + string.digits + "_-").encode())
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                              *(f"lpt{i}" for i in range(10))})
_KEY = re.compile(r"(?:[a-z0-9_-]|%[0-9A-F]{2})+")


class IdError(TubeflowError):
    """An id that cannot be turned into a path (empty, invalid Unicode, too long)."""

    exit_code = 2

    def __init__(self, kind: str, value: object, problem: str):
        self.kind, self.value, self.problem = kind, value, problem
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:60] + f"…' ({len(str(value))} characters)"
        super().__init__(f"{kind} {shown}: {problem}")

    def __reduce__(self):  # keep the fields through pickling (Ray ships errors)
        return (type(self), (self.kind, self.value, self.problem))


def path_key(value: object, *, kind: str = "id", limit: int = MAX_IMAGE_KEY) -> str:
    """The path component of an id (see module doc). Non-strings (COCO image ids may be
    integers) are taken as ``str(value)``. Raises :class:`IdError` when it cannot be honoured."""
    text = value if isinstance(value, str) else str(value)
    if not text:
        raise IdError(kind, value, "empty; an id must name its video or image")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise IdError(kind, value, "not valid Unicode (lone surrogate)") from None
    key = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in data)
    if key in _WINDOWS_DEVICES:
        key = f"%{ord(key[0]):02X}{key[1:]}"
    if len(key) > limit:
        raise IdError(kind, value, f"too long: its path name would be {len(key)} characters, at most {limit} "
                                   "are allowed")
    return key


def video_key(video_id: object) -> str:
    """:func:`path_key` of a video id."""
    return path_key(video_id, kind="video id", limit=MAX_VIDEO_KEY)


def image_key(image_id: object) -> str:
    """:func:`path_key` of an image id."""
    return path_key(image_id, kind="image id", limit=MAX_IMAGE_KEY)


def png_name(image_id: object) -> str:
    """The file name of an image's panoptic PNG (``pan_pred/<name>``): ``<key>.png``."""
    return image_key(image_id) + ".png"


def id_of_key(key: str) -> str | None:
    """The id whose key is ``key``, or None when ``key`` is not a key this rule writes (a
    foreign file in a listing: readers skip it rather than guess)."""
    if not _KEY.fullmatch(key):
        return None
    data = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "%":
            data.append(int(key[i + 1:i + 3], 16))
            i += 3
        else:
            data.append(ord(key[i]))
            i += 1
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        return value if path_key(value, limit=len(key)) == key else None
    except IdError:
        return None


def printable(value: object) -> str:
    """An id for a log line or a table: itself when printable, else its ``repr`` (a newline
    or an escape sequence in an id must not forge or garble the lines around it)."""
    text = str(value)
    return text if text.isprintable() else repr(text)
