"""Video sources from any fsspec URI, and an mp4 writer.

``open_video(uri)`` gives a :class:`VideoSource` (metadata, exact ``read(a, b)``, iteration)
for a container file (mp4/avi/mkv/mov, decoded by OpenCV) or an image-sequence directory;
``list_videos(prefix)`` finds both kinds under a prefix; :class:`VideoWriter` writes an mp4
from RGB frames atomically.
"""
from operators.video.catalog import VideoRef, list_videos, open_video
from operators.video.container import ContainerSource
from operators.video.image_sequence import ImageSequenceSource
from operators.video.source import CONTAINER_EXTENSIONS, IMAGE_EXTENSIONS, VideoMeta, VideoSource
from operators.video.writer import VideoWriter

__all__ = ["CONTAINER_EXTENSIONS", "IMAGE_EXTENSIONS", "ContainerSource", "ImageSequenceSource", "VideoMeta",
           "VideoRef", "VideoSource", "VideoWriter", "list_videos", "open_video"]
