"""Finding and opening videos by URI: the two kinds of source behind one entry point."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.video.container import ContainerSource
from operators.video.image_sequence import ImageSequenceSource
from operators.video.source import CONTAINER_EXTENSIONS, IMAGE_EXTENSIONS, VideoSource


@dataclass(frozen=True)
class VideoRef:
    """A video found under a prefix.

    ``video_id`` is its path relative to the prefix without the container extension
    (``city/0001`` for ``PREFIX/city/0001.mp4``; an image directory keeps its name), so ids
    are unique under one prefix and stable across runs.
    """

    uri: str
    video_id: str
    kind: Literal["container", "image_sequence"]

    def open(self, fps: float | None = None) -> VideoSource:
        return open_video(self.uri, fps=fps)


def open_video(uri: str, *, fps: float | None = None) -> VideoSource:
    """The source for ``uri``: a container by extension, else an image-sequence directory.

    ``fps`` is used by image sequences only (containers know their own).
    """
    uri = str(uri)
    if uri.lower().endswith(CONTAINER_EXTENSIONS):
        return ContainerSource(uri)
    filesystem, path = fs.filesystem(uri)
    if filesystem.isdir(path):
        return ImageSequenceSource(uri, fps=fps)
    if not filesystem.exists(path):
        raise CorruptFileError(uri, "file not found")
    raise FormatMismatchError(uri, f"not a video: expected a {'/'.join(CONTAINER_EXTENSIONS)} file or a directory "
                                   f"of {'/'.join(IMAGE_EXTENSIONS)} frames")


def _hidden(relative: str) -> bool:
    # Writers stage files under hidden temporary names (".name.tmp-…"); never list those.
    return any(part.startswith(".") for part in relative.split("/"))


def list_videos(uri: str) -> list[VideoRef]:
    """Every container file and every directory that directly holds images, under ``uri``
    (recursively), sorted by ``video_id``. ``uri`` may itself be a video file or image directory."""
    uri = str(uri).rstrip("/")
    filesystem, root = fs.filesystem(uri)
    root = root.rstrip("/")
    if not filesystem.exists(root):
        raise CorruptFileError(uri, "not found")
    if not filesystem.isdir(root):
        if not uri.lower().endswith(CONTAINER_EXTENSIONS):
            raise FormatMismatchError(uri, "not a video container")
        stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return [VideoRef(uri, stem, "container")]
    refs: dict[str, VideoRef] = {}
    for found in filesystem.find(root):
        relative = found.rstrip("/")[len(root):].lstrip("/")
        if not relative or _hidden(relative):
            continue
        name = relative.lower()
        if name.endswith(CONTAINER_EXTENSIONS):
            video_id = relative.rsplit(".", 1)[0]
            refs[video_id + "\0c"] = VideoRef(fs.join(uri, relative), video_id, "container")
        elif name.endswith(IMAGE_EXTENSIONS):
            directory = relative.rsplit("/", 1)[0] if "/" in relative else ""
            video_id = directory or uri.rsplit("/", 1)[-1]
            refs[video_id + "\0i"] = VideoRef(fs.join(uri, directory) if directory else uri, video_id,
                                              "image_sequence")
    return sorted(refs.values(), key=lambda r: (r.video_id, r.kind))
