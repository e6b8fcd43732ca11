"""The per-video commit protocol: a crash at any step, then recover + rerun, leaves exactly
one complete output per video (old or new, never a mix, never half)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from operators import fs
from pipelines.commit import (CommitMarker, OutputLayout, commit_video, committed_markers, is_current, read_marker,
                              recover, staged_files)

STEPS = ["intent_written", "old_marker_removed", "old_files_removed", "moved:0", "moved:1", "marker_written"]


class Crash(RuntimeError):
    pass


def stage(layout: OutputLayout, run_id: str, video_id: str, version: str, frames: int) -> str:
    """Stage a fake output of ``frames`` frame files plus a summary, all tagged ``version``."""
    staging = layout.staging(run_id, video_id)
    for i in range(frames):
        fs.write_bytes(fs.join(staging, f"pan_pred/{video_id}_{i:04d}.png"), version.encode())
    fs.write_bytes(fs.join(staging, f"summary/{video_id}.json"), json.dumps({"version": version}).encode())
    return staging


def marker(video_id: str, version: str) -> CommitMarker:
    return CommitMarker(video_id, f"fp-{version}", "cfg", {}, {"version": version}, [], run_id=version)


def assert_one_complete_output(layout: OutputLayout, video_id: str) -> str:
    """The video has a marker, every file it lists holds the marker's version, and no other
    file of the video exists under the final names. Returns the version."""
    m = read_marker(layout, video_id)
    assert m is not None, f"{video_id} not committed"
    version = m.counts["version"]
    root = layout.root
    present = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs_ in os.walk(root) for f in fs_
                     if not os.path.relpath(d, root).startswith(("_commits", "_staging")) and video_id in f)
    assert present == sorted(m.files)
    for relative in m.files:
        data = fs.read_bytes(layout.uri(relative))
        assert (json.loads(data)["version"] if relative.endswith(".json") else data.decode()) == version
    return version


def test_commit_publishes_staged_files_and_marker(tmp_path):
    layout = OutputLayout(str(tmp_path))
    staging = stage(layout, "r1", "city/0001", "v1", 2)
    files = staged_files(staging)
    assert files == ["pan_pred/city/0001_0000.png", "pan_pred/city/0001_0001.png", "summary/city/0001.json"]
    commit_video(layout, "city/0001", staging, marker("city/0001", "v1"))
    assert not os.path.exists(staging)
    m = read_marker(layout, "city/0001")
    assert m.files == files and all(os.path.exists(layout.uri(f)) for f in files)
    assert is_current(m, "fp-v1", "cfg") and not is_current(m, "fp-v2", "cfg") and not is_current(m, "fp-v1", "x")
    assert list(committed_markers(layout)) == ["city/0001"]


def test_recommit_with_fewer_files_removes_the_old_ones(tmp_path):
    layout = OutputLayout(str(tmp_path))
    commit_video(layout, "a", stage(layout, "r1", "a", "v1", 3), marker("a", "v1"))
    commit_video(layout, "a", stage(layout, "r2", "a", "v2", 1), marker("a", "v2"))
    assert assert_one_complete_output(layout, "a") == "v2"
    assert not os.path.exists(layout.uri("pan_pred/a_0002.png"))


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("previous", [False, True])
def test_crash_at_any_step_then_rerun_leaves_one_complete_output(tmp_path, step, previous):
    layout = OutputLayout(str(tmp_path))
    if previous:
        commit_video(layout, "a", stage(layout, "r0", "a", "v0", 3), marker("a", "v0"))
    commit_video(layout, "b", stage(layout, "r0", "b", "vb", 2), marker("b", "vb"))  # a bystander

    def crash(at):
        if at == step:
            raise Crash(at)

    with pytest.raises(Crash):
        commit_video(layout, "a", stage(layout, "r1", "a", "v1", 2), marker("a", "v1"), fault=crash)
    recover(layout)
    assert not os.path.exists(layout.uri("_staging"))
    assert assert_one_complete_output(layout, "b") == "vb"
    m = read_marker(layout, "a")
    if m is not None:  # the old output survived (crash before the old marker went) or the new one landed
        assert assert_one_complete_output(layout, "a") in ("v0", "v1")
        expected = "v1" if step == "marker_written" else "v0"
        assert m.counts["version"] == expected
    else:  # nothing of "a" is left under the final names: the rerun redoes it
        assert not [f for _, _, files in os.walk(layout.uri("pan_pred")) for f in files if f.startswith("a_")]
    if not is_current(m, "fp-v1", "cfg"):  # what the rerun does
        commit_video(layout, "a", stage(layout, "r2", "a", "v1", 2), marker("a", "v1"))
    assert assert_one_complete_output(layout, "a") == "v1"


def test_damaged_marker_counts_as_not_committed(tmp_path):
    layout = OutputLayout(str(tmp_path))
    fs.write_bytes(layout.marker_uri("a"), b"{not json")
    assert read_marker(layout, "a") is None and committed_markers(layout) == {}


def test_commit_on_s3(s3_bucket):
    layout = OutputLayout(f"{s3_bucket}/out")
    commit_video(layout, "a", stage(layout, "r1", "a", "v1", 2), marker("a", "v1"))
    commit_video(layout, "a", stage(layout, "r2", "a", "v2", 1), marker("a", "v2"))
    m = read_marker(layout, "a")
    assert m.counts["version"] == "v2" and m.files == ["pan_pred/a_0000.png", "summary/a.json"]
    assert not fs.exists(layout.uri("pan_pred/a_0001.png"))
    assert fs.read_bytes(layout.uri("pan_pred/a_0000.png")) == b"v2"


def test_process_killed_during_commits_then_rerun(tmp_path):
    """A real SIGKILL at an arbitrary moment of a loop of commits, then recover and redo."""
    layout = OutputLayout(str(tmp_path / "out"))
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{os.getcwd()!r}, {os.path.dirname(__file__)!r}]
        from test_commit import stage, marker
        from pipelines.commit import OutputLayout, commit_video
        layout = OutputLayout({layout.root!r})
        print("ready", flush=True)
        for round_ in range(10_000):
            for v in ("a", "b", "c"):
                version = f"v{{round_}}"
                commit_video(layout, v, stage(layout, version, v, version, 1 + round_ % 4), marker(v, version))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd())
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recover(layout)
    for v in ("a", "b", "c"):
        m = read_marker(layout, v)
        if m is None or not is_current(m, "fp-final", "cfg"):
            staging = stage(layout, "final", v, "final", 2)
            commit_video(layout, v, staging, CommitMarker(v, "fp-final", "cfg", {}, {"version": "final"}, [], "final"))
        assert assert_one_complete_output(layout, v) == "final"


def test_recover_keeps_the_current_runs_staging_and_never_deletes_outside_the_root(tmp_path):
    """Staging is per run: recovery (run under the lease, so every other run is dead) deletes the
    dead runs' staging, never the current run's; a pending intent or marker naming a path outside
    the root (a tampered record in a shared store) deletes nothing there."""
    layout = OutputLayout(str(tmp_path / "out"))
    dead, live = stage(layout, "dead-run", "a", "v0", 1), stage(layout, "live-run", "b", "v1", 1)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    fs.write_bytes(layout.pending_uri("c"), json.dumps({"video_id": "c", "files": ["../precious.txt", "/etc/x",
                                                                                   "a/../../precious.txt"]}).encode())
    assert recover(layout, "live-run") == ["c"]
    assert not os.path.exists(dead) and staged_files(live) and outside.read_text() == "keep"
    fs.write_bytes(layout.marker_uri("d"), CommitMarker("d", "f", "c", {}, {}, ["../precious.txt"], "r").to_json())
    commit_video(layout, "d", stage(layout, "live-run", "d", "v1", 1), marker("d", "v1"))
    assert outside.read_text() == "keep" and read_marker(layout, "d").run_id == "v1"
