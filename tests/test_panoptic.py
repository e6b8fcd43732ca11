"""segments_info built from an id map equals the per-segment definition (area, bbox); PNG
decoding through libspng (pyspng) equals the OpenCV path: same ids, same errors."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from operators.errors import CorruptFileError
from operators.formats import panoptic
from operators.formats.panoptic import decode_panoptic_png, encode_panoptic_png, id_to_rgb, segments_from_ids


def _per_segment_definition(ids):
    out = []
    for seg_id in np.unique(ids):
        if seg_id == 0:
            continue
        ys, xs = np.nonzero(ids == seg_id)
        out.append((int(seg_id), len(ys), (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_segments_from_ids_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    ids = np.zeros((60, 90), np.int32) if seed % 2 else np.full((60, 90), 5, np.int32)  # with and without VOID
    for seg_id in rng.choice(np.arange(1, 1 << 24), size=12, replace=False):  # ids beyond 2**16 included
        y, x = rng.integers(0, 55), rng.integers(0, 85)
        ids[y:y + rng.integers(1, 20), x:x + rng.integers(1, 30)] = seg_id
    ids[rng.random(ids.shape) < 0.02] = 77  # a scattered segment: bbox spans the frame
    segments = segments_from_ids(ids, {int(i): 3 for i in np.unique(ids)}, iscrowd_of={77: 1})
    assert [(s.id, s.area, s.bbox) for s in segments] == _per_segment_definition(ids)
    assert all(s.iscrowd == (s.id == 77) and s.category_id == 3 for s in segments)


# -- decoding: libspng (pyspng) for 8-bit RGB(A), OpenCV for the rest, same ids and errors ------------

def _opencv_ids(data, where):
    """The OpenCV path alone: what decode_panoptic_png returns without pyspng."""
    return panoptic.ids_from_decoded(panoptic.imdecode_png(data, where), where)


def _random_ids(seed, shape=(37, 53)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1 << 24, size=shape).astype(np.int32)
    ids[:3] = rng.integers(1 << 16, 1 << 17, size=(3, shape[1]))  # ids ≥ 2**16 (blue channel)
    ids[3:6] = (1 << 23) + rng.integers(0, 1 << 8, size=(3, shape[1]))  # ids ≥ 2**23 (top bit of blue)
    ids[6, :4] = [0, 1 << 23, (1 << 24) - 1, 255]
    return ids


@pytest.fixture
def libspng_calls(monkeypatch):
    """Counts the calls that reach pyspng, so a test knows which decoder answered."""
    pyspng = pytest.importorskip("pyspng")
    calls = []

    def load(data, format=None):
        calls.append(format)
        return pyspng.load(data, format)

    monkeypatch.setattr(panoptic, "pyspng", type("Spy", (), {"load": staticmethod(load)}))
    return calls


@pytest.mark.parametrize("seed", range(4))
def test_rgb_and_rgba_pngs_decode_through_libspng_to_the_opencv_ids(seed, libspng_calls):
    ids = _random_ids(seed)
    rgb = encode_panoptic_png(ids)
    alpha = np.random.default_rng(seed).integers(0, 256, size=ids.shape, dtype=np.uint8)
    rgba = cv2.imencode(".png", np.dstack([id_to_rgb(ids)[..., ::-1], alpha]))[1].tobytes()  # BGRA for OpenCV
    for data in (rgb, rgba):
        decoded = decode_panoptic_png(data, "x.png")
        assert decoded.dtype == np.int32 and decoded.shape == ids.shape
        np.testing.assert_array_equal(decoded, ids)
        np.testing.assert_array_equal(decoded, _opencv_ids(data, "x.png"))
    assert libspng_calls == ["RGBA", "RGBA"]


def test_grey_and_16_bit_pngs_go_to_opencv(libspng_calls):
    ids = _random_ids(7)
    grey8 = cv2.imencode(".png", (ids % 256).astype(np.uint8))[1].tobytes()
    grey16 = cv2.imencode(".png", (ids % 65536).astype(np.uint16))[1].tobytes()
    np.testing.assert_array_equal(decode_panoptic_png(grey8, "g.png"), ids % 256)
    np.testing.assert_array_equal(decode_panoptic_png(grey16, "g.png"), ids % 65536)
    deep = cv2.imencode(".png", id_to_rgb(ids).astype(np.uint16))[1].tobytes()  # 16-bit RGB: not a panoptic PNG
    with pytest.raises(CorruptFileError, match="d.png: panoptic PNG must be 8-bit RGB"):
        decode_panoptic_png(deep, "d.png")
    assert libspng_calls == []


@pytest.mark.parametrize("decoder", ["libspng", "opencv"])
def test_corrupt_and_truncated_pngs_name_the_file(decoder, monkeypatch):
    if decoder == "opencv":
        monkeypatch.setattr(panoptic, "pyspng", None)
    data = encode_panoptic_png(_random_ids(1))
    bad = [data[:cut] for cut in range(0, len(data), max(1, len(data) // 40))] + [data[:-1], data[:-12]]
    rng = np.random.default_rng(0)
    for _ in range(60):  # bytes overwritten anywhere, CRCs included
        b = bytearray(data)
        b[rng.integers(8, len(b))] ^= int(rng.integers(1, 256))
        bad.append(bytes(b))
    for corrupt in bad:
        try:
            expected = _opencv_ids(corrupt, "bad.png")
        except CorruptFileError as exc:
            with pytest.raises(CorruptFileError, match="bad.png: cannot decode PNG") as info:
                decode_panoptic_png(corrupt, "bad.png")
            assert str(info.value) == str(exc)
        else:  # a change OpenCV accepts (an ancillary bit) decodes to the same ids
            np.testing.assert_array_equal(decode_panoptic_png(corrupt, "bad.png"), expected)


def test_the_opencv_fallback_when_pyspng_is_not_installed():
    """In a fresh interpreter where ``import pyspng`` fails, PNGs still decode (OpenCV)."""
    script = (
        "import sys; sys.modules['pyspng'] = None\n"
        "import numpy as np\n"
        "from operators.formats import panoptic\n"
        "assert panoptic.pyspng is None\n"
        "ids = np.array([[0, 1 << 23, (1 << 24) - 1], [65536, 7, 1000]], np.int32)\n"
        "assert np.array_equal(panoptic.decode_panoptic_png(panoptic.encode_panoptic_png(ids), 'x.png'), ids)\n"
        "try:\n"
        "    panoptic.decode_panoptic_png(b'not a png', 'bad.png')\n"
        "except panoptic.CorruptFileError as exc:\n"
        "    assert 'bad.png' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_pyspng_survives_truncated_and_corrupt_pngs():
    """pyspng itself (without our checks) on truncated and overwritten PNGs raises, never
    crashes the process: run in a child process so a crash fails this test."""
    pytest.importorskip("pyspng")
    script = (
        "import numpy as np, pyspng\n"
        "from operators.formats.panoptic import encode_panoptic_png\n"
        "rng = np.random.default_rng(0)\n"
        "data = encode_panoptic_png(rng.integers(0, 1 << 24, size=(33, 47)).astype(np.int32))\n"
        "cases = [data[:cut] for cut in range(len(data))]\n"
        "for _ in range(500):\n"
        "    b = bytearray(data); b[rng.integers(0, len(b))] ^= int(rng.integers(1, 256)); cases.append(bytes(b))\n"
        "for case in cases:\n"
        "    try:\n"
        "        pyspng.load(case, 'RGBA')\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "print(len(cases))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pyspng crashed (exit {done.returncode}): {done.stderr[-2000:]}"
