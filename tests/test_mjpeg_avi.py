"""The Motion-JPEG AVI writer (operators/video/mjpeg_avi.py): JPEG bytes in, a file that OpenCV
(FFmpeg's demuxer) and tubeflow's own video source read back frame for frame, also past a RIFF."""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from operators.video import open_video
from operators.video.mjpeg_avi import MjpegAviWriter, jpeg_size


def _frames(n: int, size=(96, 128)) -> list[np.ndarray]:
    """Frames that differ from each other (a moving disc, a brightness ramp), RGB."""
    out = []
    for i in range(n):
        rgb = np.zeros((*size, 3), np.uint8)
        cv2.circle(rgb, (8 + 5 * i, size[0] // 2), 14, (30, 200, 255 - 6 * i), -1)
        rgb[: size[0] // 8] = 7 * i
        out.append(rgb)
    return out


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def _read_all(path: str) -> tuple[list[np.ndarray], float, float]:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    assert cap.isOpened()
    count, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[..., ::-1])
    cap.release()
    return frames, count, fps


def _assert_same_video(read: list[np.ndarray], written: list[np.ndarray]) -> None:
    """Every frame is back, in order: each is close to the frame written at its place (JPEG
    loses a little) and closer to it than to any other frame."""
    assert len(read) == len(written)
    for i, frame in enumerate(read):
        errors = [np.abs(frame.astype(np.int16) - w).mean() for w in written]
        assert errors[i] < 2.0, (i, errors[i])
        assert int(np.argmin(errors)) == i


@pytest.mark.parametrize("riff_limit", [1 << 30, 40_000])
def test_every_frame_reads_back_in_order(tmp_path, riff_limit):
    """One RIFF, and (a small ``riff_limit``) the OpenDML layout with several RIFFs."""
    frames = _frames(24)
    path = str(tmp_path / "v.avi")
    with MjpegAviWriter(path, fps=12.5, riff_limit=riff_limit) as writer:
        writer.write_all(_jpeg(f) for f in frames)
    assert writer.frames_written == 24
    assert (len(writer._riffs) > 1) == (riff_limit < 1 << 20)
    read, count, fps = _read_all(path)
    _assert_same_video(read, frames)
    assert count == 24 and fps == pytest.approx(12.5)
    with open_video(path) as source:  # tubeflow's own reader: verified count, exact range reads
        assert source.meta.frame_count == 24 and source.meta.size == (96, 128)
        _assert_same_video(list(source.read(10, 14)), frames[10:14])


def test_the_file_is_riff_avi_with_an_index(tmp_path):
    """The sizes of the RIFF and the movi list add up, and idx1 lists every frame as a key frame."""
    frames = _frames(5)
    path = tmp_path / "v.avi"
    with MjpegAviWriter(str(path), fps=10) as writer:
        writer.write_all(_jpeg(f) for f in frames)
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"AVI " and struct.unpack("<I", data[4:8])[0] == len(data) - 8
    idx1 = data.index(b"idx1")
    (size,) = struct.unpack("<I", data[idx1 + 4:idx1 + 8])
    entries = [struct.unpack("<4sIII", data[idx1 + 8 + 16 * i:idx1 + 24 + 16 * i]) for i in range(size // 16)]
    movi = data.index(b"movi")
    assert [e[0] for e in entries] == [b"00dc"] * 5 and all(e[1] == 0x10 for e in entries)
    for (_, _, offset, length), frame in zip(entries, frames):  # each entry points at its frame's chunk
        chunk = data[movi + offset:movi + offset + 8 + length]
        assert chunk[:4] == b"00dc" and chunk[8:] == _jpeg(frame)


def test_bad_input_is_refused_and_nothing_is_published(tmp_path):
    path = tmp_path / "v.avi"
    with pytest.raises(ValueError, match="not a JPEG"):
        with MjpegAviWriter(str(path), fps=10) as writer:
            writer.write(b"\x89PNG....")
    with pytest.raises(ValueError, match="is 64x48"):
        with MjpegAviWriter(str(path), fps=10) as writer:
            writer.write(_jpeg(_frames(1)[0]))
            writer.write(_jpeg(np.zeros((48, 64, 3), np.uint8)))
    with pytest.raises(ValueError, match="no frame"):
        with MjpegAviWriter(str(path), fps=10):
            pass
    with pytest.raises(ValueError, match="fps"):
        MjpegAviWriter(str(path), fps=0)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_jpeg_size_reads_the_frame_header():
    assert jpeg_size(_jpeg(np.zeros((37, 53, 3), np.uint8))) == (37, 53)
    progressive = cv2.imencode(".jpg", np.zeros((20, 30, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    assert jpeg_size(progressive.tobytes()) == (20, 30)
