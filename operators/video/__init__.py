"""Video sources from any fsspec URI, and an mp4 writer.

``open_video(uri)`` gives a :class:`VideoSource` (metadata, exact ``read(a, b)``, iteration)
for a container file (mp4/avi/mkv/mov, decoded by OpenCV), an image-sequence directory or a
camera topic of a driving log (``LOG.mcap#TOPIC``, ``LOG.bag#TOPIC``: :mod:`.logs`);
``list_videos(prefix)`` finds all three under a prefix; :class:`VideoWriter` writes an mp4
from RGB frames atomically.
"""
from operators.video.catalog import VideoRef, list_videos, open_video
from operators.video.container import ContainerSource
from operators.video.image_sequence import ImageSequenceSource
from operators.video.log_source import LogTopicSource
from operators.video.logs import LOG_EXTENSIONS, is_log, log_video_id, split_stream_uri, stream_uri
from operators.video.source import CONTAINER_EXTENSIONS, IMAGE_EXTENSIONS, VideoMeta, VideoSource
from operators.video.writer import VideoWriter

__all__ = ["CONTAINER_EXTENSIONS", "IMAGE_EXTENSIONS", "LOG_EXTENSIONS", "ContainerSource", "ImageSequenceSource",
           "LogTopicSource", "VideoMeta", "VideoRef", "VideoSource", "VideoWriter", "is_log", "list_videos",
           "log_video_id", "open_video", "split_stream_uri", "stream_uri"]
