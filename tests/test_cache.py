"""Local copies of remote inputs belong to the run: private, in a directory of the run's own,
removed when the run ends unless kept, bounded while it runs."""
from __future__ import annotations

import os
import stat

from operators import fs


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_copies_are_private_and_removed_with_the_run(s3_bucket, tmp_path, monkeypatch):
    base = tmp_path / "cache"
    base.mkdir(mode=0o755)  # as an older release left it: readable by everyone
    monkeypatch.setenv("TUBEFLOW_CACHE", str(base))
    fs.write_bytes(f"{s3_bucket}/v/a.mp4", b"video bytes")
    with fs.run_cache("run-1") as directory:
        copy = fs.local_copy(f"{s3_bucket}/v/a.mp4")
        assert os.path.dirname(copy) == directory == str(base / "runs" / "run-1")
        assert open(copy, "rb").read() == b"video bytes"
        assert _mode(copy) == 0o600 and _mode(directory) == 0o700 and _mode(base) == 0o700
    assert not os.path.exists(directory) and not os.path.exists(copy)
    with fs.run_cache("run-2", keep=True) as directory:
        copy = fs.local_copy(f"{s3_bucket}/v/a.mp4")
    assert os.path.exists(copy)  # asked to keep them
    assert fs.RUN_CACHE_ENV not in os.environ


def test_a_hostile_extension_does_not_reach_the_cache_name(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("TUBEFLOW_CACHE", str(tmp_path / "cache"))
    fs.write_bytes(f"{s3_bucket}/v/a.mp4 ;rm -rf", b"x")
    with fs.run_cache("run-3") as directory:
        copy = fs.local_copy(f"{s3_bucket}/v/a.mp4 ;rm -rf")
        assert os.path.dirname(copy) == directory and "." not in os.path.basename(copy)


def test_the_run_cache_is_bounded_while_the_run_lives(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("TUBEFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TUBEFLOW_CACHE_MAX_GB", str(2500 / 1e9))  # room for two 1000-byte copies
    monkeypatch.setattr(fs, "CACHE_GRACE_SECONDS", 0.0)
    with fs.run_cache("run-4") as directory:
        for i in range(4):
            fs.write_bytes(f"{s3_bucket}/v/{i}.mp4", bytes(1000))
            path = fs.local_copy(f"{s3_bucket}/v/{i}.mp4")
            os.utime(path, (i, i))  # used in this order
        assert sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)) <= 2500
