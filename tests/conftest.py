"""Shared pytest fixtures: an S3 endpoint (moto) for tests of s3:// URIs."""
from __future__ import annotations

import socket
import uuid

import fsspec
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_s3():
    """A moto S3 server on 127.0.0.1 for the session; yields its endpoint URL.

    The AWS variables point every client (boto3, s3fs) at it with dummy credentials, and
    are restored when the session ends; nothing leaves the machine.
    """
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_ENDPOINT_URL": endpoint}.items():
            env.setenv(name, value)
        S3FileSystem.clear_instance_cache()  # no s3fs client made before the variables were set
        try:
            yield endpoint
        finally:
            S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture
def s3_bucket(moto_s3, tmp_path, monkeypatch) -> str:
    """A fresh, empty bucket on the moto server: ``s3://<name>``. Remote files that OpenCV
    must open by path are cached under ``tmp_path`` (TUBEFLOW_CACHE)."""
    monkeypatch.setenv("TUBEFLOW_CACHE", str(tmp_path / "fsspec-cache"))
    name = f"tubeflow-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(moto_s3):
    """An in-process Ray with 2 CPUs for the session, started as every job starts its local Ray
    (:func:`cluster.connect.connect`: loopback only, token authentication); shut down at the end.

    Started after the moto server, so its workers inherit the AWS variables that point at it
    and a pipeline run in this process can read and write ``s3://`` (the default suite's
    object-storage tests need no second Ray)."""
    import ray

    from cluster.connect import ray_session

    with ray_session(num_cpus=2):
        yield ray
