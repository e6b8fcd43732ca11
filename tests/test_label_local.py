"""A labelling run without Ray (``--executor local``, the default for a small run) equals the
Ray graph's run: the same segments, PNGs, annotations, overlays, metrics, failure rows and commits; the
choice of engine; a pool process killed in the middle of a video costs a pass, not the video."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from operators.errors import InputError
from operators.formats import segments_table
from pipelines.commit import OutputLayout, committed_markers
from pipelines.label import label
from pipelines.label.config import LabelConfig
from pipelines.label.local import LOCAL_MAX_VIDEOS, choose_executor
from test_label_pipeline import IMAGE_ID, make_corpus

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("local", "ray")


def _config(corpus: str, executor: str, **kwargs) -> LabelConfig:
    config = LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", gt_json=f"{corpus}/gt/panoptic_gt.json",
                         image_id_format=IMAGE_ID, chunk_frames=4, write_png=True, write_overlay=True, **kwargs)
    return replace(config, resources=replace(config.resources, executor=executor))


@pytest.fixture(scope="module")
def both(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("label_local")
    corpus = make_corpus(root / "corpus")
    videos = root / "corpus" / "videos"
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)  # undecodable
    runs = {e: label(str(videos), str(root / e), _config(corpus, e), progress=False, log=lambda *_: None)
            for e in ENGINES}
    return {"root": root, "corpus": corpus, "videos": str(videos), "runs": runs}


def _sorted_segments(out: str):
    keys = [("video_id", "ascending"), ("frame_index", "ascending"), ("track_id", "ascending")]
    return segments_table.read_segments_table(f"{out}/segments").sort_by(keys)


def test_local_run_equals_the_ray_run(both):
    root, runs = both["root"], both["runs"]
    local, ray_out = str(root / "local"), str(root / "ray")
    assert [(r.video_id, r.status, r.frames, r.segments, r.tracks, r.stage) for r in runs["local"].results] == \
        [(r.video_id, r.status, r.frames, r.segments, r.tracks, r.stage) for r in runs["ray"].results]
    assert {r.video_id: r.status for r in runs["local"].results} == {"0000": "ok", "0001": "ok", "0002": "ok",
                                                                     "broken": "failed"}
    columns = ["video_id", "frame_index", "image_id", "track_id", "category_id", "area", "bbox", "mask"]
    assert _sorted_segments(local).select(columns).equals(_sorted_segments(ray_out).select(columns))
    # every sum of the metrics, exactly; the same submission and annotations
    assert runs["local"].report.vpq.per_class == runs["ray"].report.vpq.per_class
    assert runs["local"].report.stq == runs["ray"].report.stq and 0.5 < runs["local"].report.vpq.vpq <= 1.0
    assert json.loads(open(f"{local}/pred.json").read()) == json.loads(open(f"{ray_out}/pred.json").read())
    for name in sorted(os.listdir(f"{ray_out}/annotations")):
        assert open(f"{local}/annotations/{name}").read() == open(f"{ray_out}/annotations/{name}").read()
    pngs = sorted(os.listdir(f"{ray_out}/pan_pred"))
    assert pngs and sorted(os.listdir(f"{local}/pan_pred")) == pngs
    assert all(open(f"{local}/pan_pred/{p}", "rb").read() == open(f"{ray_out}/pan_pred/{p}", "rb").read()
               for p in pngs)
    # the overlay videos and thumbnails, rendered by each engine's sink: byte for byte
    for folder in ("overlays", "thumbnails"):
        names = sorted(os.listdir(f"{ray_out}/{folder}"))
        assert names == sorted(os.listdir(f"{local}/{folder}")) and len(names) == 3
        assert all(open(f"{local}/{folder}/{n}", "rb").read() == open(f"{ray_out}/{folder}/{n}", "rb").read()
                   for n in names), folder
    failures = {e: [(r["video_id"], r["stage"], r["error"]) for r in pq.read_table(f"{root / e}/failures.parquet").to_pylist()]
                for e in ENGINES}
    assert failures["local"] == failures["ray"] and failures["local"][0][:2] == ("broken", "plan")
    markers = {e: committed_markers(OutputLayout(str(root / e))) for e in ENGINES}
    assert sorted(markers["local"]) == ["0000", "0001", "0002"]
    assert {v: m.config_hash for v, m in markers["local"].items()} == {v: m.config_hash for v, m in markers["ray"].items()}
    manifests = {e: json.loads(open(f"{root / e}/run_manifest.json").read()) for e in ENGINES}
    assert manifests["local"]["model_resources"]["executor"] == "local"
    assert manifests["ray"]["model_resources"]["executor"] == "ray"
    assert not os.path.exists(f"{local}/_staging")


def test_metrics_summed_as_ray_tasks_equal_the_sums_made_in_the_driver(both, monkeypatch):
    """A run on Ray publishes inside its session: ``metrics/`` is summed by Ray tasks over shards
    of the committed videos; without Ray the same shards are summed here. Same figures, same rows."""
    import pipelines.evaluate as evaluate_pipeline
    from pipelines.label.outputs import aggregate_metrics

    layout = OutputLayout(str(both["root"] / "ray"))
    settings = both["runs"]["ray"].report.settings
    tasks = []
    real_run_ray = evaluate_pipeline.run_ray
    monkeypatch.setattr(evaluate_pipeline, "run_ray", lambda *a, **k: tasks.append(1) or real_run_ray(*a, **k))
    on_ray = aggregate_metrics(layout, settings)
    rows_on_ray = pq.read_table(f"{layout.root}/metrics/per_video.parquet").to_pylist()
    monkeypatch.setattr("cluster.connect.ray_running", lambda: False)
    here = aggregate_metrics(layout, settings)
    assert tasks == [1]  # the first ran as Ray tasks, the second did not
    assert on_ray.vpq.per_class == here.vpq.per_class and on_ray.stq == here.stq
    assert on_ray.vpq.per_class == both["runs"]["ray"].report.vpq.per_class
    assert sorted(rows_on_ray, key=lambda r: r["video_id"]) == \
        sorted(pq.read_table(f"{layout.root}/metrics/per_video.parquet").to_pylist(), key=lambda r: r["video_id"])
    assert [r["video_id"] for r in rows_on_ray] and sorted(r["video_id"] for r in rows_on_ray) == ["0000", "0001", "0002"]


def test_a_rerun_with_the_other_engine_skips_everything(both, tmp_path):
    """The engine is not part of the config hash: the outputs are the same."""
    run = label(both["videos"], str(both["root"] / "ray"), _config(both["corpus"], "local"), progress=False,
                log=lambda *_: None)
    assert {r.video_id: r.status for r in run.results} == {"0000": "skipped", "0001": "skipped", "0002": "skipped",
                                                           "broken": "failed"}


def test_the_engine_chosen(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray in this process
    assert choose_executor("auto", None, 3) == "local"
    assert choose_executor("auto", None, LOCAL_MAX_VIDEOS + 1) == "ray"
    assert choose_executor("auto", "ray://head:10001", 3) == "ray"
    assert choose_executor("auto", None, 3, gpus="gpu") == "ray"
    assert choose_executor("ray", None, 3) == "ray" and choose_executor("local", None, 10 ** 6) == "local"
    monkeypatch.setattr("glob.glob", lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
    assert choose_executor("auto", None, 3) == "ray"  # a GPU machine: one GPU per model actor
    assert choose_executor("auto", None, 3, gpus="cpu") == "local"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert choose_executor("auto", None, 3) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert choose_executor("auto", None, 3) == "ray"
    with pytest.raises(InputError, match="--address"):
        choose_executor("local", "auto", 3)


def test_the_cli_labels_a_small_corpus_without_starting_ray(both, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "label", "--input", both["videos"], "--output", str(out),
                           "--segmenter", "precomputed", "--model", f"{both['corpus']}/perframe",
                           "--image-id-format", IMAGE_ID, "--chunk-frames", "4", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 1, done.stdout + done.stderr  # the broken video fails, the others commit
    assert "local run, no Ray" in done.stdout + done.stderr
    assert "Started a local Ray instance" not in done.stdout + done.stderr
    assert sorted(committed_markers(OutputLayout(str(out)))) == ["0000", "0001", "0002"]
    columns = ["video_id", "frame_index", "track_id", "category_id", "area"]
    assert _sorted_segments(str(out)).select(columns).equals(_sorted_segments(str(both["root"] / "ray")).select(columns))


def _pool_workers(parent: int) -> list[int]:
    """The processes of a local run's pool: grandchildren of ``parent`` (its forkserver's children)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(pid))
    return [g for c in children.get(parent, []) for g in children.get(c, [])]


def test_a_killed_pool_process_costs_a_pass_not_the_video(both, tmp_path):
    """SIGKILL a pool process once it has work: its videos run again in a next pass, every
    video is committed with the same segments as the clean runs."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "jobs.cli", "label", "--input", both["videos"], "--output", str(out),
            "--segmenter", "precomputed", "--model", f"{both['corpus']}/perframe", "--image-id-format", IMAGE_ID,
            "--chunk-frames", "4", "--no-progress", "--executor", "local"]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None and not killed:
            staging = out / "_staging"
            workers = _pool_workers(process.pid)
            if workers and staging.exists() and any(staging.rglob("*.parquet")):  # a video is under way
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_a_worker)
    watcher.start()
    output, _ = process.communicate(timeout=300)
    watcher.join()
    if not killed:
        pytest.skip("the run ended before a pool process could be killed")
    assert process.returncode == 1, output  # only the broken video fails
    assert "lost a worker; pass 2" in output, output
    assert sorted(committed_markers(OutputLayout(str(out)))) == ["0000", "0001", "0002"]
    columns = ["video_id", "frame_index", "track_id", "category_id", "area"]
    assert _sorted_segments(str(out)).select(columns).equals(_sorted_segments(str(both["root"] / "ray")).select(columns))
    assert not (out / "_staging").exists()
