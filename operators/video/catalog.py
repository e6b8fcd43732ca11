"""Finding and opening videos by URI: containers, image directories and the camera topics of
driving logs behind one entry point."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from operators import fs
from operators.errors import CorruptFileError, FormatMismatchError
from operators.video.container import ContainerSource
from operators.video.image_sequence import ImageSequenceSource
from operators.video.log_source import LogTopicSource, open_log
from operators.video.logs import LOG_EXTENSIONS, is_log, log_video_id, split_stream_uri, stream_uri
from operators.video.source import CONTAINER_EXTENSIONS, IMAGE_EXTENSIONS, VideoSource


@dataclass(frozen=True)
class VideoRef:
    """A video found under a prefix.

    ``video_id`` is its path relative to the prefix without the container extension
    (``city/0001`` for ``PREFIX/city/0001.mp4``; an image directory keeps its name), so ids
    are unique under one prefix and stable across runs. A log gives one video per camera topic,
    ``<log id>:<topic>`` (``drives/0001:/camera/front/image_raw``), with a stream URI
    ``LOG#TOPIC`` (:mod:`operators.video.logs`).
    """

    uri: str
    video_id: str
    kind: Literal["container", "image_sequence", "log"]

    def open(self, fps: float | None = None) -> VideoSource:
        return open_video(self.uri, fps=fps)


def open_video(uri: str, *, fps: float | None = None) -> VideoSource:
    """The source for ``uri``: a container by extension, else an image-sequence directory.

    ``fps`` is used by image sequences only (containers know their own).
    """
    uri = str(uri)
    if uri.lower().endswith(CONTAINER_EXTENSIONS):
        return ContainerSource(uri)
    log_uri, topic = split_stream_uri(uri)
    if topic is not None or is_log(uri):
        return LogTopicSource(uri)
    filesystem, path = fs.filesystem(uri)
    if filesystem.isdir(path):
        return ImageSequenceSource(uri, fps=fps)
    if not filesystem.exists(path):
        raise CorruptFileError(uri, "file not found")
    raise FormatMismatchError(uri, f"not a video: expected a {'/'.join(CONTAINER_EXTENSIONS)} file, a log "
                                   f"(.mcap/.bag, one video per camera topic) or a directory of "
                                   f"{'/'.join(IMAGE_EXTENSIONS)} frames")


def _hidden(relative: str) -> bool:
    # Writers stage files under hidden temporary names (".name.tmp-…"); never list those.
    return any(part.startswith(".") for part in relative.split("/"))


def log_refs(log_uri: str, log_id: str) -> list[VideoRef]:
    """One :class:`VideoRef` per camera topic of a log (its index only is read). A log that does
    not open gives one ref to the bare log, which fails with the log's own error when planned,
    so a damaged log is a failed video of the run, not a failed discovery. A log without camera
    topics gives none."""
    try:
        with open_log(log_uri) as log:
            topics = sorted(log.camera_topics())
    except CorruptFileError:
        return [VideoRef(log_uri, log_id, "log")]
    return [VideoRef(stream_uri(log_uri, t), log_video_id(log_id, t), "log") for t in topics]


def list_videos(uri: str) -> list[VideoRef]:
    """Every container file, every directory that directly holds images and every camera topic
    of every log (.mcap, .bag) under ``uri`` (recursively), sorted by ``video_id``. ``uri`` may
    itself be a video file, a log, a log's stream URI or an image directory."""
    uri = str(uri).rstrip("/")
    log_uri, topic = split_stream_uri(uri)
    if topic is not None:
        stem = log_uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return [VideoRef(uri, log_video_id(stem, topic), "log")]
    filesystem, root = fs.filesystem(uri)
    root = root.rstrip("/")
    if not filesystem.exists(root):
        raise CorruptFileError(uri, "not found")
    if not filesystem.isdir(root):
        stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if is_log(uri):
            return log_refs(uri, stem)
        if not uri.lower().endswith(CONTAINER_EXTENSIONS):
            raise FormatMismatchError(uri, "not a video container or log")
        return [VideoRef(uri, stem, "container")]
    refs: dict[str, VideoRef] = {}
    for found in filesystem.find(root):
        relative = found.rstrip("/")[len(root):].lstrip("/")
        if not relative or _hidden(relative):
            continue
        name = relative.lower()
        if name.endswith(LOG_EXTENSIONS):
            for ref in log_refs(fs.join(uri, relative), relative.rsplit(".", 1)[0]):
                refs[ref.video_id + "\0l"] = ref
        elif name.endswith(CONTAINER_EXTENSIONS):
            video_id = relative.rsplit(".", 1)[0]
            refs[video_id + "\0c"] = VideoRef(fs.join(uri, relative), video_id, "container")
        elif name.endswith(IMAGE_EXTENSIONS):
            directory = relative.rsplit("/", 1)[0] if "/" in relative else ""
            video_id = directory or uri.rsplit("/", 1)[-1]
            refs[video_id + "\0i"] = VideoRef(fs.join(uri, directory) if directory else uri, video_id,
                                              "image_sequence")
    return sorted(refs.values(), key=lambda r: (r.video_id, r.kind))
