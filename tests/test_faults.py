"""Every stage of ``label`` survives a SIGKILL of its process; ``evaluate`` survives a dead worker.

Each test runs a labelling job and, from a watcher thread, SIGKILLs one process of the run's
own Ray (found by its process title, which Ray sets to ``ray::<actor or task>`` while it runs
one) in the middle of its work: a segmentation, flow, association feeder or association actor,
a plan/decode, sink or finalize task. The run must end with every video committed and segment
rows identical to a clean run's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pytest

from operators.formats import segments_table
from pipelines.commit import STAGING_DIR, OutputLayout, committed_markers
from pipelines.label import label
from pipelines.label.config import LabelConfig
from test_label_pipeline import IMAGE_ID, make_corpus

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VIDEOS = [f"{v:04d}" for v in range(4)]


class Killer(threading.Thread):
    """SIGKILLs the first process under ``root`` whose title starts with ``target`` (or for
    which ``target(process, title)`` holds) once ``ready()`` holds (with ``every``, each such
    process until stopped); ``killed`` names them."""

    def __init__(self, root: psutil.Process, target, ready=lambda: True, timeout: float = 300.0, every: bool = False):
        super().__init__(daemon=True)
        self.root, self.ready, self.timeout, self.every = root, ready, timeout, every
        self.matches = target if callable(target) else lambda process, title: title.startswith(target)
        self.killed: list[tuple[int, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.time() + self.timeout
        while not self.done.is_set() and time.time() < deadline:
            for process in self.root.children(recursive=True):
                try:
                    title = (process.cmdline() or [""])[0]
                    if self.matches(process, title) and self.ready():
                        process.send_signal(signal.SIGKILL)
                        self.killed.append((process.pid, title))
                        if not self.every:
                            return
                except psutil.Error:
                    continue
            time.sleep(0.005)

    def stop(self) -> None:
        self.done.set()
        self.join(5)


def segment_rows(out: str):
    table = segments_table.read_segments_table(f"{out}/segments")
    return table.sort_by([("video_id", "ascending"), ("frame_index", "ascending"), ("track_id", "ascending")])


def config_of(corpus: str) -> LabelConfig:
    """With GT: the metrics the sink scores in the stream must survive each loss too."""
    return LabelConfig(segmenter="precomputed", model=f"{corpus}/perframe", image_id_format=IMAGE_ID, chunk_frames=4,
                       gt_json=f"{corpus}/gt/panoptic_gt.json")


@pytest.fixture(scope="module")
def clean(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("faults")
    corpus = make_corpus(root / "corpus", videos=len(VIDEOS), frames=16, height=192, width=384)
    out = str(root / "clean")
    run = label(f"{corpus}/videos", out, config_of(corpus), progress=False, log=lambda *_: None)
    assert [r.status for r in run.results] == ["ok"] * len(VIDEOS) and run.report is not None
    return {"corpus": corpus, "rows": segment_rows(out), "root": root, "report": run.report}


def checkpoints_exist(out: Path):
    def ready() -> bool:
        staging = out / STAGING_DIR
        return staging.exists() and any(staging.glob("*/association/*/*.npz"))
    return ready


KINDS = {
    "segmentation actor": ("ray::MapWorker(MapBatches(SegmentChunks)).submit", None),
    "flow actor": ("ray::MapWorker(MapBatches(FlowChunks)).submit", None),
    "association feeder": ("ray::MapWorker(MapBatches(AssociateChunks)).submit", None),
    "association actor": ("ray::AssociationActor.push", checkpoints_exist),
    "decode task": ("ray::FlatMap(plan_video)->Map(decode_chunk)", None),
    "sink task": ("ray::MapBatches(write_frames)", None),
    "finalize task": ("ray::finalize_video", None),
    # the window's sub-driver (graph.window_summaries): its Ray Data execution and every process of
    # its stages go with it; the window's videos resume from their checkpoints in the next pass
    "sub-driver": ("ray::label_window", checkpoints_exist),
}


def label_under(killer: Killer, corpus: str, out: Path):
    """The corpus labelled into ``out`` while ``killer`` watches this process's children."""
    killer.start()
    try:
        return label(f"{corpus}/videos", str(out), config_of(corpus), progress=False, log=lambda *_: None)
    finally:
        killer.stop()


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_killed_process_costs_a_retry_not_a_video(kind, clean, tmp_path):
    title, condition = KINDS[kind]
    out = tmp_path / "out"
    killer = Killer(psutil.Process(), title, condition(out) if condition else lambda: True)
    run = label_under(killer, clean["corpus"], out)
    assert killer.killed, f"no {kind} was seen running: nothing was killed"
    assert {r.video_id: (r.status, r.error) for r in run.results} == {v: ("ok", "") for v in VIDEOS}
    assert sorted(committed_markers(OutputLayout(str(out)))) == VIDEOS
    assert segment_rows(str(out)).equals(clean["rows"])
    assert run.report.vpq.per_class == clean["report"].vpq.per_class and run.report.stq == clean["report"].stq
    assert not (out / STAGING_DIR).exists()
    if kind == "sub-driver":  # its window's videos were lost with it and ran again (each committed once: above)
        assert run.resumed


def test_a_video_that_kills_its_decoder_every_time_fails_alone(clean, tmp_path, monkeypatch):
    """The first pass puts several videos in one input block (pipelines/label/graph.py:
    ``input_blocks``); here all four, the first of which kills the plan+decode process that opens
    it, every time. Its block-mates lose the first pass with it, then run in blocks of their own
    and are committed with the clean rows: the bad video fails alone."""
    from pipelines.label import graph

    poison = os.path.realpath(f"{clean['corpus']}/videos/{VIDEOS[0]}.mp4")

    def decoding_poison(process: psutil.Process, title: str) -> bool:
        return title.startswith("ray::FlatMap(plan_video)") and any(f.path == poison for f in process.open_files())

    blocks = []
    monkeypatch.setattr(graph, "input_blocks", lambda n, slots, isolate=False: blocks.append((n, isolate)) or
                        (n if isolate else 1))
    out = tmp_path / "out"
    killer = Killer(psutil.Process(), decoding_poison, every=True)
    run = label_under(killer, clean["corpus"], out)
    assert killer.killed, "the bad video's plan+decode task was never seen running"
    assert blocks[0] == (len(VIDEOS), False) and len(blocks) > 1 and all(isolate for _, isolate in blocks[1:])
    results = {r.video_id: r for r in run.results}
    assert {v: results[v].status for v in VIDEOS[1:]} == {v: "ok" for v in VIDEOS[1:]}
    assert sorted(v for v, _ in run.resumed if v != VIDEOS[0]) == VIDEOS[1:]  # they lost the first pass with it
    assert sorted(committed_markers(OutputLayout(str(out)))) == VIDEOS[1:]
    rows = segment_rows(str(out))
    assert rows.equals(clean["rows"].filter(pc.field("video_id") != VIDEOS[0]))
    # killed in every attempt it was seen in, it fails after the last pass, alone
    assert results[VIDEOS[0]].status == "failed" and "lost a worker in each of" in results[VIDEOS[0]].error


def test_cli_exits_0_after_its_association_actor_is_killed(clean, tmp_path):
    """The same through ``tubeflow label`` in its own process with its own Ray: exit code 0."""
    corpus, out = clean["corpus"], tmp_path / "out"
    argv = [sys.executable, "-m", "jobs.cli", "label", "--input", f"{corpus}/videos", "--output", str(out),
            "--segmenter", "precomputed", "--model", f"{corpus}/perframe", "--image-id-format", IMAGE_ID,
            "--chunk-frames", "4", "--no-progress", "--executor", "ray"]  # the association actor is Ray's
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = Killer(psutil.Process(proc.pid), "ray::AssociationActor.push", checkpoints_exist(out))
    killer.start()
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        killer.stop()
    assert killer.killed, "the association actor was never seen running"
    assert proc.returncode == 0, stderr[-3000:]
    assert f"{len(VIDEOS)} labelled" in stdout
    assert segment_rows(str(out)).equals(clean["rows"])


def forkserver_worker(process: psutil.Process, title: str) -> bool:
    """A worker of a ``concurrent.futures`` pool started by multiprocessing's fork server."""
    try:
        parent = process.parent()
        return parent is not None and "forkserver" in " ".join(parent.cmdline())
    except psutil.Error:
        return False


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_evaluate_survives_a_killed_worker(executor, clean, tmp_path, ray_local):
    """``tubeflow evaluate``'s worker killed mid-shard (a Ray task, a process of the local
    pool): its shard runs again and the report is the clean run's."""
    from pipelines.evaluate import evaluate

    corpus = clean["corpus"]
    gt = (f"{corpus}/gt/panoptic_gt.json", f"{corpus}/gt/panoptic", f"{corpus}/perframe")
    options = {"executor": executor, "workers": 2, "videos_per_task": 1, "progress": False}
    reference = evaluate(*gt, str(tmp_path / "clean"), **options)
    killer = Killer(psutil.Process(), "ray::evaluate_shard" if executor == "ray" else forkserver_worker)
    killer.start()
    try:
        report = evaluate(*gt, str(tmp_path / "killed"), **options)
    finally:
        killer.stop()
    assert killer.killed, "no evaluation worker was seen running"
    assert not report.failures
    assert report.vpq.vpq == reference.vpq.vpq and report.stq["STQ"] == reference.stq["STQ"]
