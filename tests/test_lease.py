"""One writer per output root (pipelines/lease.py): a second run refuses naming the holder, a
dead holder's lease is taken over, compare-and-set on local files and on S3 (moto)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from operators import fs
from pipelines.lease import (LEASE_NAME, RUN_ENV, Lease, LeaseHeldError, LeaseLostError, LeaseRecord, check_holder,
                             run_processes)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def test_second_run_refuses_naming_the_holder_and_since_when(root):
    with Lease(root, "run-a", command="tubeflow label", ttl=30):
        with pytest.raises(LeaseHeldError) as caught:
            Lease(root, "run-b", ttl=30).acquire()
        message = str(caught.value)
        assert "run-a" in message and "tubeflow label" in message and " since 20" in message and "\n" not in message
        check_holder(root, "run-a")
        with pytest.raises(LeaseLostError):
            check_holder(root, "run-b")
    with Lease(root, "run-b", ttl=30):  # released: the next run takes it at once
        check_holder(root, "run-b")
    assert LeaseRecord.from_json(fs.read_bytes(f"{root}/{LEASE_NAME}")).released


def test_lease_is_renewed_while_the_run_lives_and_expires_when_it_stops(root):
    lease = Lease(root, "run-a", ttl=1.5).acquire()
    time.sleep(2.5)  # longer than the ttl: only the renewals keep it
    with pytest.raises(LeaseHeldError):
        Lease(root, "run-b", ttl=30).acquire()
    lease._stop.set()  # the holder hangs: no more renewals (a paused or partitioned process)
    lease._thread.join()
    time.sleep(1.6)
    with Lease(root, "run-b", ttl=30):
        lease.renew()  # the old holder wakes up: its compare-and-set fails, it knows it lost
        assert "lost its lease" in lease.lost and "run-b" in lease.lost
        with pytest.raises(LeaseLostError):
            lease.check_holder()


def test_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path):
    root = str(tmp_path / "out")
    code = ("import sys, os, time; sys.path.insert(0, os.getcwd()); from pipelines.lease import Lease;"
            f"Lease({root!r}, 'run-dead', ttl=600).acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(LeaseHeldError, match="run-dead"):
        Lease(root, "run-b").acquire()
    proc.kill()
    proc.wait()
    with Lease(root, "run-b"):  # its pid is gone: no need to wait 600 s
        check_holder(root, "run-b")


def test_compare_and_set_lets_one_of_two_racers_win(root):
    """Two runs read the same free lease and both try to take it: exactly one write succeeds."""
    from pipelines.lease import _Conflict, _store

    store = _store(f"{root}/{LEASE_NAME}")
    data, version = store.read()
    assert data is None
    store.write(b'{"first": 1}', version)
    with pytest.raises(_Conflict):
        store.write(b'{"second": 1}', version)
    data, version2 = store.read()
    assert json.loads(data) == {"first": 1}
    store.write(b'{"third": 1}', version2)
    with pytest.raises(_Conflict):
        store.write(b'{"fourth": 1}', version2)  # a stale version never overwrites


def test_taking_over_a_killed_holder_stops_the_processes_it_left(tmp_path):
    """A killed driver's Ray workers live on in process groups of their own and go on writing;
    the run that takes the lease over stops every process carrying the dead run's id first."""
    root = str(tmp_path / "out")
    dead = f"run-dead-{uuid.uuid4().hex}"  # unique, as real run ids are: another suite may run this test too
    code = ("import sys, os, subprocess, time; sys.path.insert(0, os.getcwd()); from pipelines.lease import Lease;"
            f"Lease({root!r}, {dead!r}, ttl=600).acquire();"
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True);"
            "print(w.pid, flush=True); time.sleep(600)")
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = int(driver.stdout.readline())
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert run_processes(dead) == [worker]  # /proc shows initial environments: not the driver
        driver.kill()
        driver.wait()
        assert run_processes(dead) == [worker]  # the driver is gone, its worker is not
        with Lease(root, "run-b") as lease:
            assert lease.stopped == [worker] and run_processes(dead) == []
            assert os.environ[RUN_ENV] == "run-b"
        assert os.environ.get(RUN_ENV) != "run-b"
        assert unrelated.poll() is None  # nothing without the dead run's id is touched
    finally:
        unrelated.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
