"""Driving logs as video sources: MCAP and ROS 1 bags, every camera topic a video, frames read
through the index, timestamps, and clear errors for bad logs."""
from __future__ import annotations

import csv
import struct

import cv2
import numpy as np
import pytest

from operators.errors import CorruptFileError, FormatMismatchError, InputError
from operators.synth.logs import CameraStream, LogWriter, log_schedule
from operators.video import ContainerSource, VideoWriter, list_videos, open_video, stream_uri
from operators.video.log_source import LogTopicSource, open_log
from pipelines.plan import discover

START = 1_700_000_000_000_000_000
N = 24
CAMERAS = [CameraStream("/camera/front/image_raw/compressed", "jpeg"), CameraStream("/camera/left/png", "png"),
           CameraStream("/camera/rear/image_raw", "rgb8"), CameraStream("/camera/mono", "mono8"),
           CameraStream("/camera/bgr", "bgr8")]


def frames_of(seed: int, n: int = N, height: int = 40, width: int = 56) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (5, 5), 0)
    out = np.repeat(base[None], n, axis=0)
    for t in range(n):
        out[t, (t * 2) % (height - 8):(t * 2) % (height - 8) + 8, t % (width - 8):t % (width - 8) + 8] = (250, 10, 10)
    return out


def write_log(path: str, unstamped: int = 3, chunk_size: int = 8_000) -> dict:
    """Five cameras + a speed topic, uneven timing, frame ``unstamped`` of every camera without a
    header stamp; returns topic → (frames, [(stamp, log time)])."""
    truth = {}
    with LogWriter(path, chunk_size=chunk_size) as log:
        for c, camera in enumerate(CAMERAS):
            frames, schedule = frames_of(c), log_schedule(N, 10.0, seed=c, start_ns=START, phase_ns=7_000_000 * c)
            for k, (stamp, log_time) in enumerate(schedule):
                log.add_frame(camera, frames[k], 0 if k == unstamped else stamp, log_time)
            truth[camera.topic] = (frames, schedule)
        for k in range(60):
            log.add_scalar("/vehicle/speed", 10.0 + k, START + k * 40_000_000)
    return truth


@pytest.fixture(scope="module", params=["mcap", "bag"])
def log(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("logs") / f"drive_0001.{request.param}")
    return path, write_log(path)


def test_every_camera_topic_is_a_video_and_other_topics_are_ignored(log):
    path, truth = log
    refs = list_videos(path)
    assert [r.video_id for r in refs] == sorted(f"drive_0001:{c.topic}" for c in CAMERAS)
    assert all(r.kind == "log" and r.uri == stream_uri(path, r.video_id.split(":", 1)[1]) for r in refs)
    with open_log(path) as opened:
        assert "/vehicle/speed" not in opened.camera_topics()


@pytest.mark.parametrize("camera", CAMERAS, ids=lambda c: c.kind)
def test_frames_and_timestamps_match_what_was_recorded(log, camera):
    path, truth = log
    frames, schedule = truth[camera.topic]
    with open_video(stream_uri(path, camera.topic)) as source:
        assert (source.meta.frame_count, source.meta.size) == (N, frames.shape[1:3])
        assert source.meta.fps == pytest.approx(10.0, rel=0.1)
        got, times = source.read_timed(2, 9)
        whole, _ = source.read_timed(0, N)
    expected = frames[2:9]
    if camera.kind == "mono8":
        expected = np.repeat(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in expected])[..., None], 3, axis=3)
    if camera.kind == "jpeg":  # lossy: compare with the same bytes decoded by OpenCV directly
        expected = np.stack([cv2.imdecode(cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1],
                                          cv2.IMREAD_COLOR)[..., ::-1] for f in expected])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(whole[2:9], got)  # a range reads what the whole topic reads there
    # the header stamp, or the log time where the stamp is zero (frame 3)
    assert times == [log_time if k == 3 else stamp for k, (stamp, log_time) in enumerate(schedule)][2:9]


def test_a_frame_range_decompresses_only_the_chunks_that_hold_it(tmp_path, monkeypatch):
    import mcap.stream_reader

    path = str(tmp_path / "long.mcap")
    write_log(path, chunk_size=4_000)  # many small chunks
    real, calls = mcap.stream_reader.get_chunk_data_stream, []
    monkeypatch.setattr(mcap.stream_reader, "get_chunk_data_stream",
                        lambda chunk, validate_crc=False: calls.append(1) or real(chunk, validate_crc))
    with open_log(path) as opened:
        chunks_total = len(opened._summary.chunk_indexes)
        table = opened._table(CAMERAS[2].topic)
        held = {offset for _, offset, _ in table[10:12]}
        calls.clear()
        assert [m.index for m in opened.messages(CAMERAS[2].topic, 10, 12)] == [10, 11]
    assert chunks_total > 10 and len(calls) == len(held) <= 2


def test_log_times_order_frames_even_when_written_out_of_order(tmp_path):
    path = str(tmp_path / "shuffled.mcap")
    frames = frames_of(0, 6)
    camera = CameraStream("/cam", "png")
    with LogWriter(path) as log:
        for k in (3, 0, 5, 1, 4, 2):
            log.add_frame(camera, frames[k], START + k * 100_000_000, START + k * 100_000_000 + 5)
    with open_video(stream_uri(path, "/cam")) as source:
        got, times = source.read_timed(0, 6)
    np.testing.assert_array_equal(got, frames)
    assert times == [START + k * 100_000_000 for k in range(6)]


def _bad_log(path: str) -> None:
    frames = frames_of(1, 4)
    good, bad = CameraStream("/cam/good", "png"), CameraStream("/cam/bad", "jpeg")
    with LogWriter(path) as log:
        for k in range(4):
            log.add_frame(good, frames[k], START + k * 100_000_000, START + k * 100_000_000 + 5)
            fields = {"header": {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": "c"}, "format": "jpeg",
                      "data": b"\xff\xd8 not really a jpeg" if k == 2 else cv2.imencode(".jpg", frames[k])[1].tobytes()}
            log.add_message(bad.topic, bad.message_type, fields, START + k * 100_000_000 + 7)
        log.add_message("/cam/depth", "sensor_msgs/msg/Image",
                        {"header": {"stamp": {"sec": 1, "nanosec": 0}, "frame_id": "d"}, "height": 2, "width": 2,
                         "encoding": "32FC1", "is_bigendian": 0, "step": 8, "data": bytes(16)}, START + 9)


@pytest.mark.parametrize("ext", ["mcap", "bag"])
def test_a_corrupt_message_names_log_topic_and_message_and_other_topics_go_on(tmp_path, ext):
    path = str(tmp_path / f"bad.{ext}")
    _bad_log(path)
    with open_video(stream_uri(path, "/cam/bad")) as source:
        source.read(0, 2)
        with pytest.raises(CorruptFileError, match=rf"bad\.{ext} topic /cam/bad message 2 .*corrupt message"):
            source.read(1, 4)
    with open_video(stream_uri(path, "/cam/good")) as source:
        assert source.read(0, 4).shape == (4, 40, 56, 3)
    with pytest.raises(FormatMismatchError, match=r"topic /cam/depth message 0 .*unsupported image encoding '32FC1'"):
        open_video(stream_uri(path, "/cam/depth"))


@pytest.mark.parametrize("ext", ["mcap", "bag"])
def test_damaged_or_foreign_files_are_clear_errors(tmp_path, ext):
    path = tmp_path / f"drive.{ext}"
    write_log(str(path))
    data = path.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[:len(data) // 2])
    junk = tmp_path / f"junk.{ext}"
    junk.write_bytes(b"this is not a log at all" * 10)
    for bad in (cut, junk):
        with pytest.raises(CorruptFileError, match=rf"{bad.name}: not a readable"):
            open_log(str(bad))
        # discovery keeps the bad log as one video that fails with the log's own error
        (ref,) = list_videos(str(bad))
        with pytest.raises(CorruptFileError, match=bad.name):
            open_video(ref.uri)
    with pytest.raises(InputError, match="no camera topic '/vehicle/speed'"):
        LogTopicSource(stream_uri(str(path), "/vehicle/speed"))
    with pytest.raises(InputError, match="name one as LOG#TOPIC"):
        open_video(str(path))


def test_a_damaged_chunk_is_an_error_of_the_messages_it_holds(tmp_path):
    path = tmp_path / "chunky.mcap"
    write_log(str(path), chunk_size=4_000)
    with open_log(str(path)) as opened:
        table = opened._table(CAMERAS[1].topic)
        victim = table[N // 2][1]
    data = bytearray(path.read_bytes())
    data[victim + 60:victim + 90] = bytes(30)  # inside the chunk's compressed records
    path.write_bytes(bytes(data))
    with open_video(stream_uri(str(path), CAMERAS[1].topic)) as source:
        with pytest.raises(CorruptFileError, match=rf"chunky\.mcap topic {CAMERAS[1].topic} message \d+ .*chunk at "
                                                   rf"byte {victim}"):
            source.read(0, N)


def test_a_manifest_names_logs_with_or_without_topics(tmp_path, log):
    path, _ = log
    manifest = tmp_path / "corpus.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "uri", "topic"])
        writer.writerow(["front", path, CAMERAS[0].topic])
        writer.writerow(["whole", path, ""])
    entries = discover(str(manifest))
    ids = [e.video_id for e in entries]
    assert ids == sorted(["front"] + [f"whole:{c.topic}" for c in CAMERAS])
    assert len({e.fingerprint.digest for e in entries}) == 1  # topics of one log share its fingerprint
    assert entries[0].uri == stream_uri(path, CAMERAS[0].topic)


def test_container_times_are_presentation_times_plus_the_recorded_creation_time(tmp_path):
    path = str(tmp_path / "clip.mp4")
    with VideoWriter(path, 5.0) as writer:
        writer.write_all(frames_of(2, 6))
    with ContainerSource(path) as source:
        assert source.creation_time_ns is None  # OpenCV's writer records none
        _, times = source.read_timed(0, 6)
    assert times == [k * 200_000_000 for k in range(6)]
    # record a creation time in the movie header, as cameras do
    data = bytearray(open(path, "rb").read())
    at = data.index(b"mvhd") + 4
    created_unix = 1_700_000_000
    version = data[at]
    assert version == 0
    data[at + 4:at + 8] = struct.pack(">I", created_unix + 2_082_844_800)
    open(path, "wb").write(bytes(data))
    with ContainerSource(path) as source:
        _, times = source.read_timed(2, 4)
    assert times == [created_unix * 10 ** 9 + k * 200_000_000 for k in (2, 3)]


def test_frame_directories_have_no_times(tmp_path):
    for k, rgb in enumerate(frames_of(3, 3)):
        cv2.imwrite(str(tmp_path / f"f{k}.png"), rgb[..., ::-1])
    with open_video(str(tmp_path)) as source:
        assert source.read_timed(0, 3)[1] == [None, None, None]


def _rewrite(src: str, dst: str, **writer_options) -> None:
    """Copy an MCAP's schemas, channels and messages byte for byte into a differently laid out file."""
    from mcap.reader import make_reader
    from mcap.writer import Writer

    with open(src, "rb") as f, open(dst, "wb") as out:
        reader = make_reader(f)
        summary = reader.get_summary()
        writer = Writer(out, **writer_options)
        writer.start(profile="ros2")
        schemas = {i: writer.register_schema(s.name, s.encoding, s.data) for i, s in summary.schemas.items()}
        channels = {i: writer.register_channel(c.topic, c.message_encoding, schemas[c.schema_id])
                    for i, c in summary.channels.items()}
        for _, channel, message in reader.iter_messages(log_time_order=True):
            writer.add_message(channels[channel.id], message.log_time, message.data, message.publish_time)
        writer.finish()


@pytest.mark.parametrize("layout", ["unchunked", "no message index"])
def test_mcaps_without_an_index_are_read_by_scanning(tmp_path, layout):
    from mcap.writer import IndexType

    indexed = str(tmp_path / "indexed.mcap")
    write_log(indexed)
    other = str(tmp_path / "other.mcap")
    _rewrite(indexed, other, **({"use_chunking": False} if layout == "unchunked" else {"index_types": IndexType.NONE}))
    with open_log(other) as opened:
        assert not opened.indexed or opened._table(CAMERAS[1].topic)[0][1] < 0  # the scanning path
    for camera in (CAMERAS[1], CAMERAS[2]):
        with open_video(stream_uri(indexed, camera.topic)) as a, open_video(stream_uri(other, camera.topic)) as b:
            assert b.meta.frame_count == a.meta.frame_count == N
            got, times = b.read_timed(5, 9)
            want, want_times = a.read_timed(5, 9)
        np.testing.assert_array_equal(got, want)
        assert times == want_times


def test_raw_encodings_decode_to_the_same_rgb():
    from types import SimpleNamespace

    from operators.video.ros_images import decode_raw

    rgb = frames_of(4, 1, 6, 10)[0]
    wide = (rgb.astype(np.uint16) << 8) | 0x5A  # 16-bit: the 8-bit value on top, noise below

    def message(encoding, pixels, bigendian=0, pad=0):
        rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
        rows = np.pad(rows, ((0, 0), (0, pad)))  # a row stride larger than the row
        return SimpleNamespace(encoding=encoding, height=pixels.shape[0], width=pixels.shape[1],
                               step=rows.shape[1], is_bigendian=bigendian, data=rows.tobytes())

    np.testing.assert_array_equal(decode_raw(message("rgb8", rgb, pad=3), "w"), rgb)
    np.testing.assert_array_equal(decode_raw(message("bgr8", rgb[..., ::-1].copy()), "w"), rgb)
    np.testing.assert_array_equal(decode_raw(message("rgb16", wide), "w"), rgb)
    np.testing.assert_array_equal(decode_raw(message("bgr16", wide[..., ::-1].byteswap().copy(), bigendian=1), "w"),
                                  rgb)
    with pytest.raises(CorruptFileError, match="needs 180 bytes, the message holds 120"):
        decode_raw(SimpleNamespace(encoding="rgb8", height=6, width=10, step=30, is_bigendian=0, data=bytes(120)),
                   "drive.bag topic /c message 3")


@pytest.mark.parametrize("ext", ["mcap", "bag"])
def test_logs_at_any_fsspec_uri(tmp_path, ext):
    """A prefix on another filesystem (memory://): discovery, ranges and stamps as from local disk.
    The MCAP is read in place through fsspec (range reads); the bag is copied to the local cache."""
    import fsspec

    local = str(tmp_path / f"drive.{ext}")
    write_log(local)
    prefix = f"memory://logs-{ext}-{tmp_path.name}"
    with open(local, "rb") as f:
        fsspec.filesystem("memory").pipe(f"{prefix}/day1/drive.{ext}".replace("memory://", "/"), f.read())
    refs = list_videos(prefix)
    assert [r.video_id for r in refs] == sorted(f"day1/drive:{c.topic}" for c in CAMERAS)
    camera = CAMERAS[2]
    with open_video(stream_uri(f"{prefix}/day1/drive.{ext}", camera.topic)) as remote, \
            open_video(stream_uri(local, camera.topic)) as disk:
        got, times = remote.read_timed(7, 12)
        want, want_times = disk.read_timed(7, 12)
    np.testing.assert_array_equal(got, want)
    assert times == want_times


def test_a_second_open_reuses_the_frame_table(tmp_path, monkeypatch):
    """A decode worker opens a log once per chunk: the message indexes are read once per process,
    and a rewritten log (another summary) is indexed anew."""
    import mcap.records

    path = str(tmp_path / "cached.mcap")
    write_log(path, chunk_size=4_000)
    real, reads = mcap.records.MessageIndex.read, []
    monkeypatch.setattr(mcap.records.MessageIndex, "read", staticmethod(lambda stream: reads.append(1) or real(stream)))
    topic = CAMERAS[1].topic
    with open_video(stream_uri(path, topic)) as source:
        first = source.read(3, 5)
    assert reads
    reads.clear()
    with open_video(stream_uri(path, topic)) as source:
        np.testing.assert_array_equal(source.read(3, 5), first)
    assert reads == []
    write_log(path, unstamped=5, chunk_size=3_000)  # the same name, other bytes
    with open_video(stream_uri(path, topic)) as source:
        source.read(3, 5)
    assert reads
