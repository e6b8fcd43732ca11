"""One rule from ids to paths (operators/ids.py): hostile video and image ids on local files
and on S3 (moto) never write outside the output, never collide (also on a case-insensitive
file system), and come back unchanged in the data."""
from __future__ import annotations

import json
import os
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import fs
from operators.formats import segments_table
from operators.formats.vps_layout import PredictionWriter
from operators.ids import MAX_VIDEO_KEY, IdError, id_of_key, image_key, path_key, png_name, video_key
from operators.synth import SynthConfig, generate_video, write_corpus
from pipelines.commit import OutputLayout, committed_markers
from pipelines.label import label
from pipelines.label.config import LabelConfig

IMAGE_ID = "{video_id}_{frame_index:04d}_synth"
HOSTILE = ["../../../../escape/pwn", "/abs/olute", "C:\\win\\path", "..\\..\\back", ".hidden", "..", ".",
           "%2e%2e%2fpct", "%2E%2E", "ünïcødé/名前", "ctrl\x01\n\ttab", "Case", "case", "CASE", "con", "a.pending",
           "a", "~tilde", "sp ace", "dup.json", "*?[glob]", "video_id=x", "-dash"]
UNUSABLE = {"": "empty", "x" * 400: "too long"}
SAFE_NAME = re.compile(r"[a-z0-9_%A-F-]+")


def _random_ids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "aAbB./\\%_-~ \x00\n\x7fé名" + "".join(chr(c) for c in range(0x20, 0x7f))
    return list({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(n)})


def test_key_is_one_safe_component_and_reversible():
    for value in HOSTILE + _random_ids(2000):
        key = path_key(value)
        assert SAFE_NAME.fullmatch(key), key
        assert key not in (".", "..") and not key.startswith(".") and "." not in key
        assert id_of_key(key) == value


def test_keys_never_collide_even_ignoring_case():
    ids = HOSTILE + _random_ids(5000, seed=1) + [v.upper() for v in _random_ids(500, seed=2)]
    keys = {path_key(v) for v in set(ids)}
    assert len(keys) == len(set(ids))
    assert len({k.casefold() for k in keys}) == len(keys)
    assert len({k.lower() for k in keys}) == len(keys)


def test_ids_that_cannot_name_a_path_are_errors_naming_the_id():
    for value, problem in UNUSABLE.items():
        with pytest.raises(IdError, match=problem):
            video_key(value)
    with pytest.raises(IdError, match="Unicode"):
        video_key("bad\ud800")
    assert len(video_key("v" * MAX_VIDEO_KEY)) == MAX_VIDEO_KEY
    with pytest.raises(IdError, match="too long"):
        video_key("é" * 40)  # 80 UTF-8 bytes, 240 characters of key
    assert image_key(17) == "17" and png_name("A/b") == "%41%2Fb.png"


def test_foreign_names_are_not_taken_for_keys():
    # names this rule never writes: upper-case letters, dots, lower-case hex, broken escapes,
    # invalid UTF-8, a device name or a letter written as an escape where it needs none
    for name in ("Video", "a.b", "%zz", "%2e", "%", "", "%C3", "con", "%61"):
        assert id_of_key(name) is None, name
    assert id_of_key("%63on") == "con" and id_of_key("%41") == "A"


# ----------------------------------------------------------------------------- end to end
def _corpus(root, hostile: list[str]) -> tuple[str, str]:
    """One synthetic video listed under every hostile id, and per-frame predictions for each."""
    cfg = SynthConfig(videos=1, frames=2, height=64, width=128, seed=0, annotate_every=5)
    write_corpus(str(root / "corpus"), cfg)
    frames = list(generate_video(cfg, 0))
    with PredictionWriter(str(root / "perframe")) as writer:
        for video_id in hostile:
            for i, frame in enumerate(frames):
                writer.add(IMAGE_ID.format(video_id=video_id, frame_index=i), frame.panoptic)
    ids = hostile + list(UNUSABLE)
    manifest = str(root / "manifest.parquet")
    pq.write_table(pa.table({"video_id": ids, "uri": [str(root / "corpus" / "videos" / "0000.mp4")] * len(ids)}),
                   manifest)
    return manifest, str(root / "perframe")


def _check_output(out: str, run, hostile: list[str], frames: int = 2) -> None:
    status = {r.video_id: r for r in run.results}
    assert {v for v, r in status.items() if r.status == "ok"} == set(hostile), \
        {v: r.error for v, r in status.items() if r.status != "ok"}
    for value, problem in UNUSABLE.items():
        assert status[value].status == "failed" and problem in status[value].error
    layout = OutputLayout(out)
    assert sorted(committed_markers(layout)) == sorted(hostile)
    table = segments_table.read_segments_table(f"{out}/segments", columns=["video_id", "frame_index"])
    assert set(table["video_id"].to_pylist()) == set(hostile)  # the original ids, back from the paths
    pred = json.loads(fs.read_bytes(f"{out}/pred.json"))["annotations"]
    assert sorted(a["image_id"] for a in pred) == \
        sorted(IMAGE_ID.format(video_id=v, frame_index=i) for v in hostile for i in range(frames))
    assert all(fs.exists(f"{out}/pan_pred/{a['file_name']}") for a in pred)
    filesystem, root = fs.fresh(out)
    names = [f[len(root.rstrip("/")) + 1:] for f in filesystem.find(root)]
    fixed = {"segments", "pan_pred", "annotations", "overlays", "_commits", "runs", "pred.json", "run_manifest.json",
             "failures.parquet", "_layout.json", "_lease.json", "_lease.lock", "review", "thumbnails"}
    for name in names:
        top, *rest = name.split("/")
        assert top in fixed, name
        for part in rest:
            stem = part.split(".", 1)[0]
            stem = stem[len("video_key="):] if stem.startswith("video_key=") else stem
            assert SAFE_NAME.fullmatch(stem) or part.startswith("part-") or top == "runs", name
    partitions = [n.split("/")[1] for n in names if n.startswith("segments/")]
    assert len({p.lower() for p in set(partitions)}) == len(set(partitions)) == len(hostile)


def _snapshot(root) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


def test_hostile_ids_on_local_files(tmp_path, ray_local):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    manifest, perframe = _corpus(deep, HOSTILE)
    out = str(deep / "out")
    before = _snapshot(tmp_path)
    config = LabelConfig(segmenter="precomputed", model=perframe, image_id_format=IMAGE_ID, chunk_frames=2,
                         write_png=True, write_overlay=True)
    run = label(manifest, out, config, progress=False, log=lambda *_: None)
    created = {p for p in _snapshot(tmp_path) - before if not p.startswith(out + os.sep)}
    assert not created, created  # nothing outside --output, whatever the ids say
    assert not os.path.exists("/abs") and not (tmp_path / "escape").exists()
    _check_output(out, run, HOSTILE)


def test_hostile_ids_on_s3(tmp_path, s3_bucket, ray_local):
    hostile = ["../../../../escape/pwn", "/abs/olute", "..\\..\\back", ".hidden", "..", "%2e%2e%2fpct",
               "ünïcødé/名前", "ctrl\x01\n\ttab", "Case", "case", "a.pending", "*?[glob]"]
    manifest, perframe = _corpus(tmp_path, hostile)
    out = f"{s3_bucket}/deep/out"
    config = LabelConfig(segmenter="precomputed", model=perframe, image_id_format=IMAGE_ID, chunk_frames=2,
                         write_png=True)
    run = label(manifest, out, config, progress=False, log=lambda *_: None)
    filesystem, bucket = fs.fresh(s3_bucket)
    keys = filesystem.find(bucket)
    assert keys and all(k.startswith(f"{bucket}/deep/out/") for k in keys), keys[:5]
    _check_output(out, run, hostile)
