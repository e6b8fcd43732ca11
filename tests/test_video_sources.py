"""Video sources: metadata, exact range decoding (seek vs sequential), listing, writing,
and the same through memory:// and s3:// URIs."""
from __future__ import annotations

import os
import struct
import uuid

import cv2
import fsspec
import numpy as np
import pytest

from operators import fs
from operators.errors import InputError
from operators.video import (ContainerSource, ImageSequenceSource, VideoRef, VideoWriter, list_videos,
                             open_video)

FRAMES, HEIGHT, WIDTH, FPS = 50, 48, 64, 10.0


def synthetic_frames(n: int = FRAMES, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """``(n, H, W, 3) uint8``: a textured background and a red square that moves one step a
    frame, so every frame differs from its neighbours (a wrong frame cannot pass as right)."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (5, 5), 0)
    frames = np.repeat(background[None], n, axis=0)
    for t in range(n):
        x, y = (2 * t) % (width - 12), (t * 3) % (height - 12)
        frames[t, y:y + 12, x:x + 12] = (255, 0, 0)
    return frames


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_frames()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory, frames) -> str:
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    with VideoWriter(path, FPS) as writer:
        writer.write_all(frames)
    return path


@pytest.fixture(scope="module")
def sequential(mp4) -> np.ndarray:
    """The reference: every frame of the mp4 decoded front to back, no seeking."""
    with ContainerSource(mp4, allow_seek=False) as source:
        return source.read(0, source.meta.frame_count)


def write_image_sequence(directory: str, frames: np.ndarray, ext: str = ".png") -> None:
    for t, rgb in enumerate(frames):
        ok, buf = cv2.imencode(ext, rgb[..., ::-1])
        assert ok
        fs.write_bytes(fs.join(directory, f"frame_{t:04d}{ext}"), buf.tobytes())


# -- containers ------------------------------------------------------------------------


def test_mp4_metadata_is_verified(mp4):
    with open_video(mp4) as source:
        assert isinstance(source, ContainerSource)
        assert (source.meta.frame_count, source.meta.fps, source.meta.width, source.meta.height) == \
            (FRAMES, FPS, WIDTH, HEIGHT)
        assert source.header_frame_count == FRAMES
        assert source.frame_count_by == "seek probe"  # the header was verified without decoding it all
        assert len(source) == FRAMES


def test_mp4_decodes_rgb_close_to_what_was_written(sequential, frames):
    assert sequential.shape == (FRAMES, HEIGHT, WIDTH, 3) and sequential.dtype == np.uint8
    # mp4v is lossy: close, not equal; a BGR/RGB swap would put the red square in blue.
    assert np.abs(sequential.astype(int) - frames.astype(int)).mean() < 8
    square = sequential[0, 2:10, 2:10].reshape(-1, 3).mean(axis=0)
    assert square[0] > 200 and square[2] < 60


RANGES = [(0, 5), (37, 45), (12, 30), (3, 4), (49, 50), (20, 20), (0, FRAMES), (44, 49), (1, 17)]


def test_seek_reads_equal_sequential_decode(mp4, sequential):
    """Ranges in an order that seeks forward, backward and continues in place."""
    with ContainerSource(mp4) as source:
        for a, b in RANGES:
            np.testing.assert_array_equal(source.read(a, b), sequential[a:b], err_msg=f"range [{a}, {b})")
        assert source.seeks["exact"] >= 3 and source.seeks["failed"] == 0  # seeks were used, each one verified


def test_inexact_seek_falls_back_to_sequential_decode(mp4, sequential, monkeypatch):
    """When a seek cannot be verified, frames come from sequential decoding, still exact."""
    monkeypatch.setattr(ContainerSource, "_frame_at", lambda self, ms: None)  # no landing can be identified
    with ContainerSource(mp4) as source:
        assert source.meta.frame_count == FRAMES
        assert source.frame_count_by == "decoding"  # the seek probe was refused
        for a, b in RANGES:
            np.testing.assert_array_equal(source.read(a, b), sequential[a:b], err_msg=f"range [{a}, {b})")
        assert source.seeks["failed"] == 1 and not source.seeking  # tried once, then sequential


def _box_offset(buf: bytes, path: list[bytes], off: int = 0, end: int | None = None) -> int:
    """Offset of the ISO-BMFF (mp4) box at ``path`` (e.g. [b"moov", b"trak", …])."""
    end = len(buf) if end is None else end
    while off < end:
        size, kind = struct.unpack(">I4s", buf[off:off + 8])
        if kind == path[0]:
            return off if len(path) == 1 else _box_offset(buf, path[1:], off + 8, off + size)
        off += size
    raise KeyError(path[0])


@pytest.fixture(scope="module")
def vfr_mp4(mp4, tmp_path_factory) -> str:
    """The test mp4 made variable-frame-rate: its time-to-sample table (stts) rewritten so the
    first half of the frames lasts 1.75 frame periods each and the second half 0.25 (same
    total duration, same pictures). OpenCV's frame seeks assume a constant rate; on this
    file OpenCV 5.0's CAP_PROP_POS_FRAMES lands on the wrong frame for every target from 37 on."""
    data = bytearray(open(mp4, "rb").read())
    stbl = [b"moov", b"trak", b"mdia", b"minf", b"stbl"]
    stts = _box_offset(data, stbl + [b"stts"])
    _, entries, count, delta = struct.unpack(">IIII", data[stts + 8:stts + 24])
    assert (entries, count) == (1, FRAMES)
    half = FRAMES // 2
    data[stts + 8:stts + 24] = struct.pack(">IIIIII", 0, 2, half, delta * 7 // 4, FRAMES - half, delta // 4)
    for depth in range(1, len(stbl) + 2):  # the stts box grew by one entry (8 bytes): so did its ancestors
        box = _box_offset(data, (stbl + [b"stts"])[:depth])
        data[box:box + 4] = struct.pack(">I", struct.unpack(">I", data[box:box + 4])[0] + 8)
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    path.write_bytes(bytes(data))
    return str(path)


def test_variable_frame_rate_seeks_are_identified_and_reads_stay_exact(vfr_mp4, sequential):
    with ContainerSource(vfr_mp4, allow_seek=False) as reference:
        expected = reference.read(0, FRAMES)
        timestamps = []
    cap = cv2.VideoCapture(vfr_mp4, cv2.CAP_FFMPEG)
    while cap.grab():
        timestamps.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    cap.release()
    assert len(set(np.round(np.diff(timestamps), 3))) == 2  # the fixture really is variable-rate
    np.testing.assert_array_equal(expected, sequential)  # same pictures, other timestamps
    with ContainerSource(vfr_mp4) as source:
        assert source.meta.frame_count == FRAMES and source.frame_count_by == "decoding"
        for a, b in RANGES + [(47, 50), (36, 38)]:
            np.testing.assert_array_equal(source.read(a, b), expected[a:b], err_msg=f"range [{a}, {b})")
        # OpenCV landed off target (before it: decoded forward from there), and no read needed
        # the decode-from-the-start fallback: landings are identified by the timestamp table.
        assert source.seeks["recovered"] > 0 and source.seeks["failed"] == 0 and source.seeking


def test_iteration_matches_read(mp4, sequential):
    with open_video(mp4) as source:
        np.testing.assert_array_equal(np.stack(list(source)), sequential)
        np.testing.assert_array_equal(np.stack(list(source.iter_frames(40, 43))), sequential[40:43])


def test_range_outside_the_video_is_an_input_error(mp4):
    with open_video(mp4) as source:
        with pytest.raises(InputError, match=r"clip\.mp4.*\[45, 51\)"):
            source.read(45, 51)
        with pytest.raises(InputError):
            source.read(5, 3)


@pytest.mark.parametrize("name,fourcc", [("clip.avi", "MJPG"), ("clip.mkv", "mp4v")])
def test_other_containers(tmp_path, frames, name, fourcc):
    uri = str(tmp_path / name)
    with VideoWriter(uri, FPS, fourcc=fourcc) as writer:
        writer.write_all(frames[:20])
    with ContainerSource(uri, allow_seek=False) as reference:
        expected = reference.read(0, reference.meta.frame_count)
    with open_video(uri) as source:
        assert source.meta.frame_count == 20
        np.testing.assert_array_equal(source.read(14, 19), expected[14:19])
        np.testing.assert_array_equal(source.read(2, 6), expected[2:6])
    assert np.abs(expected.astype(int) - frames[:20].astype(int)).mean() < 8


# -- image sequences ---------------------------------------------------------------------


def test_image_sequence_reads_exact_frames_in_name_order(tmp_path, frames):
    directory = str(tmp_path / "seq")
    write_image_sequence(directory, frames[:12])
    with open_video(directory, fps=17.0) as source:
        assert isinstance(source, ImageSequenceSource)
        assert (source.meta.frame_count, source.meta.fps, source.meta.size) == (12, 17.0, (HEIGHT, WIDTH))
        np.testing.assert_array_equal(source.read(0, 12), frames[:12])  # PNG is lossless
        np.testing.assert_array_equal(source.read(7, 9), frames[7:9])
    with open_video(directory) as source:
        assert source.meta.fps is None


def test_image_sequence_skips_writers_staging_files(tmp_path, frames):
    """Writers stage a file under a hidden name with its extension (".name.tmp-….png")
    until it is complete; a sequence listed meanwhile (or after a killed writer) must not
    take it for a frame."""
    directory = str(tmp_path / "seq")
    write_image_sequence(directory, frames[:3])
    (tmp_path / "seq" / ".frame_0003.tmp-1234abcd.png").write_bytes(b"half a png")
    with open_video(directory) as source:
        assert source.meta.frame_count == 3
        np.testing.assert_array_equal(source.read(0, 3), frames[:3])


def test_image_sequence_of_jpegs(tmp_path, frames):
    directory = str(tmp_path / "jpg")
    write_image_sequence(directory, frames[:3], ext=".jpg")
    with open_video(directory) as source:
        decoded = source.read(0, 3)
    assert decoded.shape == (3, HEIGHT, WIDTH, 3)
    assert np.abs(decoded.astype(int) - frames[:3].astype(int)).mean() < 8


# -- listing -------------------------------------------------------------------------------


def test_list_videos_finds_containers_and_image_directories(tmp_path, mp4, frames):
    root = tmp_path / "corpus"
    (root / "city").mkdir(parents=True)
    (root / "city" / "0001.mp4").write_bytes(open(mp4, "rb").read())
    (root / "0002.avi").write_bytes(b"listing looks at names, not bytes")
    write_image_sequence(str(root / "seq" / "0003"), frames[:2])
    (root / "notes.txt").write_text("not a video")
    (root / "city" / ".0004.tmp-1234.mp4").write_bytes(b"a writer's staging file")
    refs = list_videos(str(root))
    assert refs == [
        VideoRef(f"{root}/0002.avi", "0002", "container"),
        VideoRef(f"{root}/city/0001.mp4", "city/0001", "container"),
        VideoRef(f"{root}/seq/0003", "seq/0003", "image_sequence"),
    ]
    with refs[1].open() as source:
        assert source.meta.frame_count == FRAMES
    assert list_videos(f"{root}/seq/0003") == [VideoRef(f"{root}/seq/0003", "0003", "image_sequence")]
    assert list_videos(f"{root}/city/0001.mp4") == [VideoRef(f"{root}/city/0001.mp4", "0001", "container")]


# -- writing -------------------------------------------------------------------------------


def test_writer_leaves_nothing_when_the_block_fails(tmp_path, frames):
    uri = str(tmp_path / "out" / "clip.mp4")
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(uri, FPS) as writer:
            writer.write_all(frames[:5])
            raise RuntimeError("boom")
    assert not os.path.exists(uri)
    assert os.listdir(tmp_path / "out") == []  # the hidden staging file is gone too


def test_writer_rejects_a_frame_of_another_size(tmp_path, frames):
    uri = str(tmp_path / "clip.mp4")
    with pytest.raises(ValueError, match="frame 1 is 32x48"):
        with VideoWriter(uri, FPS) as writer:
            writer.write(frames[0])
            writer.write(frames[1, :, :32])
    assert not os.path.exists(uri)


# -- remote URIs ---------------------------------------------------------------------------


def _check_remote_corpus(base: str, mp4: str, frames: np.ndarray, sequential: np.ndarray) -> None:
    """Put the test mp4, an mp4 written by VideoWriter (which uploads) and an image sequence
    under ``base``; list and decode them through the URI."""
    fs.write_bytes(fs.join(base, "videos", "clip.mp4"), open(mp4, "rb").read())
    with VideoWriter(fs.join(base, "videos", "written.mp4"), FPS) as writer:
        writer.write_all(frames[:8])
    write_image_sequence(fs.join(base, "frames", "clip"), frames[:4])
    refs = list_videos(base)
    assert [(r.video_id, r.kind) for r in refs] == [
        ("frames/clip", "image_sequence"), ("videos/clip", "container"), ("videos/written", "container")]
    assert all(r.uri.startswith(base + "/") for r in refs)
    with refs[1].open() as source:
        assert (source.meta.frame_count, source.meta.fps) == (FRAMES, FPS)
        np.testing.assert_array_equal(source.read(30, 36), sequential[30:36])
    with refs[2].open() as source:
        assert source.meta.frame_count == 8
        assert np.abs(source.read(0, 8).astype(int) - frames[:8].astype(int)).mean() < 8
    with refs[0].open() as source:
        np.testing.assert_array_equal(source.read(1, 4), frames[1:4])


def test_memory_uri(mp4, frames, sequential, tmp_path, monkeypatch):
    monkeypatch.setenv("TUBEFLOW_CACHE", str(tmp_path / "cache"))
    base = f"memory://tubeflow-test-{uuid.uuid4().hex[:8]}"
    try:
        _check_remote_corpus(base, mp4, frames, sequential)
    finally:
        fsspec.filesystem("memory").rm(base.split("://")[1], recursive=True)


def test_s3_uri(s3_bucket, mp4, frames, sequential):
    _check_remote_corpus(f"{s3_bucket}/corpus", mp4, frames, sequential)


@pytest.mark.parametrize("scheme", ["memory", "s3"])
def test_remote_video_overwritten_is_not_served_from_a_stale_cache(scheme, frames, tmp_path, monkeypatch, request):
    """Containers are opened from fsspec's local cache: a video replaced remotely must be
    fetched again (regression: the cache served the old copy)."""
    monkeypatch.setenv("TUBEFLOW_CACHE", str(tmp_path / "cache"))
    base = request.getfixturevalue("s3_bucket") if scheme == "s3" else f"memory://tubeflow-test-{uuid.uuid4().hex[:8]}"
    uri = fs.join(base, "v.mp4")
    for count in (5, 9):
        with VideoWriter(uri, FPS) as writer:
            writer.write_all(frames[:count])
        with open_video(uri) as source:
            assert source.meta.frame_count == count
    if scheme == "memory":
        fsspec.filesystem("memory").rm(base.split("://")[1], recursive=True)


def test_file_uri(tmp_path, mp4, frames, sequential):
    write_image_sequence(str(tmp_path / "seq"), frames[:3])
    (tmp_path / "clip.mp4").write_bytes(open(mp4, "rb").read())
    refs = list_videos(f"file://{tmp_path}")
    assert [(r.uri, r.video_id) for r in refs] == [(f"file://{tmp_path}/clip.mp4", "clip"),
                                                   (f"file://{tmp_path}/seq", "seq")]
    with refs[0].open() as source:
        np.testing.assert_array_equal(source.read(20, 24), sequential[20:24])
    with refs[1].open() as source:
        np.testing.assert_array_equal(source.read(0, 3), frames[:3])


def test_remote_copies_are_published_whole(tmp_path, monkeypatch):
    """Workers of one node share the local cache of remote videos. A download must land
    under a temporary name and be renamed into place: written straight to the cached name,
    a second worker fetching the same video at the same time truncates the copy the first
    one is already decoding. Threads fetching at once all get the complete bytes."""
    import threading

    monkeypatch.setenv("TUBEFLOW_CACHE", str(tmp_path / "cache"))
    memory = fsspec.filesystem("memory")
    base = f"memory://tubeflow-test-{uuid.uuid4().hex[:8]}"
    data = bytes(range(256)) * 4096
    fs.write_bytes(fs.join(base, "v.mp4"), data)
    targets, get_file, one_reader = [], type(memory).get_file, threading.Lock()

    def recording_get_file(self, rpath, lpath, **kwargs):
        targets.append(str(lpath))
        with one_reader:  # memory:// hands every reader the same BytesIO: one download at a time
            return get_file(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(type(memory), "get_file", recording_get_file)
    results = []
    threads = [threading.Thread(target=lambda: results.append(open(fs.local_copy(fs.join(base, "v.mp4")), "rb").read()))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    path = fs.local_copy(fs.join(base, "v.mp4"))
    assert targets and path not in targets
    assert results == [data] * 4 and open(path, "rb").read() == data
    assert sorted(os.listdir(tmp_path / "cache")) == [os.path.basename(path)]  # no staging file left
    memory.rm(base.split("://")[1], recursive=True)


def test_remote_cache_is_bounded_least_recently_used_first(tmp_path, monkeypatch):
    """A nightly job reads every video of a bucket: the local copies must not fill the disk."""
    monkeypatch.setenv("TUBEFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TUBEFLOW_CACHE_MAX_GB", str(2500 / 1e9))  # room for two 1000-byte copies
    monkeypatch.setattr(fs, "CACHE_GRACE_SECONDS", 0.0)
    base = f"memory://tubeflow-test-{uuid.uuid4().hex[:8]}"
    for name in "abc":
        fs.write_bytes(fs.join(base, f"{name}.mp4"), name.encode() * 1000)
    a = fs.local_copy(fs.join(base, "a.mp4"))
    b = fs.local_copy(fs.join(base, "b.mp4"))
    os.utime(b, (1, 1))                      # b was used long ago …
    assert fs.local_copy(fs.join(base, "a.mp4")) == a  # … a just now (a hit refreshes it)
    c = fs.local_copy(fs.join(base, "c.mp4"))
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(os.path.basename(p) for p in (a, c))
    assert open(c, "rb").read() == b"c" * 1000
    # a copy used within the grace period is kept even over the limit; a download in progress too
    monkeypatch.setattr(fs, "CACHE_GRACE_SECONDS", 3600.0)
    open(tmp_path / "cache" / ".x.tmp-1", "wb").write(b"x" * 5000)
    assert fs.evict_cache(max_bytes=0) == []
    assert fs.evict_cache(max_bytes=1000) == [] and len(os.listdir(tmp_path / "cache")) == 3
    fsspec.filesystem("memory").rm(base.split("://")[1], recursive=True)
