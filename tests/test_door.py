"""Bad input at the door: every problem with what a command is given is one line naming the
file and the problem, found before Ray starts (exit code 2); a busy output is refused naming its
holder (exit code 75); an output of an earlier release is adopted or refused, never mixed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobs import cli
from operators import fs
from pipelines.commit import OutputLayout
from pipelines.migrate import LAYOUT_FILE, check_layout_version


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the command gets as far as starting Ray."""
    import cluster.connect

    def started(*args, **kwargs):
        raise AssertionError("Ray was started for a command that cannot run")

    monkeypatch.setattr(cluster.connect, "connect", started)


@pytest.fixture
def videos(tmp_path):
    from operators.synth import SynthConfig, write_corpus

    write_corpus(str(tmp_path / "corpus"), SynthConfig(videos=1, frames=2, height=32, width=64, seed=0))
    return str(tmp_path / "corpus" / "videos")


def run_label(tmp_path, capsys, *options, input_uri=None):
    code = cli.main(["label", "--input", input_uri or str(tmp_path / "corpus" / "videos"), "--output",
                     str(tmp_path / "out"), "--no-progress", *options])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("content, problem", [(b"garbage" * 10, "not a readable torch weights file"),
                                              (None, "not found")])
def test_unusable_weights_are_one_line_before_ray(tmp_path, capsys, videos, no_ray, content, problem):
    model = tmp_path / "weights.pt"
    if content is not None:
        model.write_bytes(content)
    code, err = run_label(tmp_path, capsys, "--model", str(model))
    assert code == 2 and len(err.splitlines()) == 1 and str(model) in err and problem in err, err
    assert not (tmp_path / "out").exists()  # the output is not touched


@pytest.mark.parametrize("content, card, problem", [
    (b"garbage" * 10, None, "not a learned tracker weights file"),          # no card: the network is loaded
    (None, None, "learned tracker weights not readable"),
    (b"garbage" * 10, '{"sha256": "0123abcd"}', "damaged or replaced"),  # checked against its card, no torch
    (b"garbage" * 10, "{not json", "not a weights card")])
def test_unusable_shipped_tracker_weights_are_one_line_before_ray(tmp_path, capsys, videos, no_ray, monkeypatch,
                                                                  content, card, problem):
    """The default tracker (composite) loads the shipped weights: without them ``label`` is one
    line naming the file and saying how to run without the network."""
    from operators.association import learned

    shipped = tmp_path / "learned_tracker.pt"
    if content is not None:
        shipped.write_bytes(content)
    if card is not None:
        (tmp_path / "learned_tracker.pt.json").write_text(card)
    monkeypatch.setattr(learned, "LEARNED_WEIGHTS", str(shipped))
    code, err = run_label(tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and str(shipped) in err and problem in err, err
    assert "--tracker hybrid" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, problem", [
    ('{"max_lost_frames": "abc"}', "field 'max_lost_frames' must be an integer, got \"abc\""),
    ('{"min_affinity": [1]}', "field 'min_affinity' must be a finite number"),
    ('{"max_lost_frames": -1}', "max_lost_frames must be ≥ 0"),
    ('{"assignment": "greedy"}', "assignment must be one of"),
    ('{"no_such_field": 1}', "unknown TrackerConfig fields ['no_such_field']"),
    ('[1, 2]', "expected a JSON object"),
    ('{"max_lost_frames": 3', "not valid JSON"),
    ('{"thing_category_ids": [11, "x"]}', "must be a list of integers"),
])
def test_bad_tracker_configs_are_one_line_naming_the_file(tmp_path, capsys, videos, no_ray, config, problem):
    path = tmp_path / "tracker.json"
    path.write_text(config)
    code, err = run_label(tmp_path, capsys, "--tracker-config", str(path))
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err and problem in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("content, problem", [(b'{"images": [', "invalid JSON"),
                                              (b'{"images": [], "annotations": []}', "missing top-level key 'categories'"),
                                              (None, "not found")])
def test_a_bad_gt_file_is_one_line_before_anything_is_touched(tmp_path, capsys, videos, no_ray, content, problem):
    """``--gt``: the whole GT file is checked at the door (read as a stream), before the output's
    lease and before Ray."""
    gt = tmp_path / "gt.json"
    if content is not None:
        gt.write_bytes(content)
    code, err = run_label(tmp_path, capsys, "--gt", str(gt))
    assert code == 2 and len(err.splitlines()) == 1 and str(gt) in err and problem in err, err
    assert not (tmp_path / "out").exists()


def test_bad_tracker_config_of_track_is_one_line(tmp_path, capsys):
    code = cli.main(["track", "--images", str(tmp_path), "--perframe-json", str(tmp_path / "p.json"),
                     "--perframe-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--config",
                     '{"max_lost_frames": 1.5}'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "tubeflow track: error: --config: invalid tracker config: field 'max_lost_frames' " \
                                "must be an integer, got 1.5"
    assert not (tmp_path / "out").exists()


def test_an_input_without_videos_says_what_it_found(tmp_path, capsys, no_ray):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("x")
    (docs / "table.json").write_text("{}")
    code, err = run_label(tmp_path, capsys, input_uri=str(docs))
    assert code == 2 and len(err.splitlines()) == 1 and str(docs) in err
    assert "holds no video: found 2 file(s) tubeflow does not read (.json, .txt" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_label(tmp_path, capsys, input_uri=str(empty))
    assert code == 2 and "nothing (an empty directory)" in err


def test_manifest_problems_are_one_line(tmp_path, capsys, videos, no_ray):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path\na,x.mp4\n")
    code, err = run_label(tmp_path, capsys, input_uri=str(manifest))
    assert code == 2 and str(manifest) in err and "row 1: needs the columns 'video_id' and 'uri'" in err
    manifest.write_text(f"video_id,uri\na,{videos}/0000.mp4\na,{videos}/0000.mp4\n")
    code, err = run_label(tmp_path, capsys, input_uri=str(manifest))
    assert code == 2 and "row 2: video_id 'a' is listed twice" in err
    manifest.write_text("video_id,uri\n")
    code, err = run_label(tmp_path, capsys, input_uri=str(manifest))
    assert code == 2 and "the manifest lists no video" in err


def test_a_second_run_on_a_busy_output_refuses_naming_the_holder(tmp_path, capsys, videos, no_ray):
    out = str(tmp_path / "out")
    code = ("import sys, os, time; sys.path.insert(0, os.getcwd()); from pipelines.lease import Lease;"
            f"Lease({out!r}, 'run-cron', command='tubeflow nightly', ttl=600).acquire(); print('held', flush=True);"
            "time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_label(tmp_path, capsys)
        assert code == 75 and len(err.splitlines()) == 1, err
        assert "in use by run run-cron (tubeflow nightly" in err and f"pid {holder.pid}" in err and " since " in err
    finally:
        holder.kill()
        holder.wait()


def _old_release_output(root, video_id: str, image_id: str) -> None:
    """What the release before the id rule wrote for one committed video (quote-named files)."""
    from urllib.parse import quote

    key = quote(video_id, safe="")
    files = [f"segments/video_id={key}/part-00000000-00000001.parquet", f"annotations/{key}.json",
             f"pan_pred/{image_id}.png"]
    for f in files:
        fs.write_bytes(fs.join(root, f), b"x")
    marker = {"video_id": video_id, "input_fingerprint": "f", "config_hash": "c", "model_checksums": {},
              "counts": {"frames": 2}, "files": files, "run_id": "old", "status": "ok", "committed_at": "t"}
    fs.write_bytes(fs.join(root, f"_commits/{key}.json"), json.dumps(marker).encode())


def test_an_old_output_whose_names_differ_is_refused_unchanged(tmp_path, capsys, videos, no_ray):
    out = tmp_path / "out"
    _old_release_output(str(out), "City/0001", "City/0001_000000")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, err = run_label(tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "written by an earlier tubeflow" in err and "'City/0001'" in err and "Rebuild it" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*") if not p.name.startswith("_lease")) == before


def test_an_old_output_whose_names_agree_is_adopted(tmp_path):
    out = str(tmp_path / "out")
    _old_release_output(out, "city_0001", "city_0001_000000")
    check_layout_version(OutputLayout(out))
    assert json.loads(fs.read_bytes(f"{out}/{LAYOUT_FILE}"))["layout"] == 2
    from pipelines.commit import committed_markers

    assert list(committed_markers(OutputLayout(out))) == ["city_0001"]


def test_track_that_fails_leaves_no_partial_output(tmp_path, monkeypatch):
    """A job that raises half-way (here: the second video's segments table cannot be written)
    leaves nothing under --out, not the first video's PNGs."""
    from jobs import track
    from operators.synth import SynthConfig, generate_video, write_corpus
    from operators.formats.vps_layout import PredictionWriter

    cfg = SynthConfig(videos=2, frames=2, height=32, width=64, seed=0)
    write_corpus(str(tmp_path / "corpus"), cfg)
    with PredictionWriter(str(tmp_path / "perframe")) as writer:
        for v in range(2):
            for frame in generate_video(cfg, v):
                writer.add(frame.image_id, frame.panoptic)
    calls = []
    real = track.segments_table.write_segments_table

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(track.segments_table, "write_segments_table", fail_second)
    out = tmp_path / "out"
    argv = ["track", "--images", str(tmp_path / "corpus" / "frames"), "--perframe-json",
            str(tmp_path / "perframe" / "pred.json"), "--perframe-dir", str(tmp_path / "perframe" / "pan_pred"),
            "--out", str(out)]
    with pytest.raises(OSError, match="disk full"):
        cli.main(argv)
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    monkeypatch.setattr(track.segments_table, "write_segments_table", real)
    assert cli.main(argv) == 0
    assert (out / "pred.json").exists() and len(list((out / "pan_pred").glob("*.png"))) == 4
    assert not (out / "_staging").exists()


@pytest.mark.parametrize("fmt, problem", [("{video_id}_frame", "must use both {video_id} and {frame_index}"),
                                          ("frame_{frame_index:06d}", "must use both"),
                                          ("{video}_{frame_index}", "is not a format of video_id and frame_index"),
                                          ("{video_id}_{frame_index:q}", "is not a format")])
def test_an_image_id_format_that_would_give_two_frames_one_png_is_refused(tmp_path, capsys, videos, no_ray, fmt,
                                                                          problem):
    code, err = run_label(tmp_path, capsys, "--image-id-format", fmt)
    assert code == 2 and len(err.splitlines()) == 1 and problem in err, err
