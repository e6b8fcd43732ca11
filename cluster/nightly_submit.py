"""Submit the nightly job to a Ray cluster's job server exactly once per night.

    python -m cluster.nightly_submit --address http://tubeflow-head-svc:8265 [--night YYYY-MM-DD]
        [--job-name NAME] [--attempts 2] [--working-dir /app] -- tubeflow nightly --address auto …

A blocking ``ray job submit`` in a CronJob pod starts a second nightly on the same output when
the pod restarts mid-job (the first job still runs on the cluster; ``concurrencyPolicy: Forbid``
only sees pods). This submitter names each night's job (``tubeflow-nightly-<night>-<attempt>``)
and looks at the job server before it submits:

* a job of this night is pending or running → follow its logs (a restarted pod re-attaches);
* it succeeded → nothing to do, exit 0;
* it failed or was stopped → the next attempt, while ``--attempts`` allow (a rerun resumes:
  committed videos are skipped), else exit 1.

The job server refuses a second job with the same submission id, so two submitters racing for
the same attempt start it once (the other follows it). The night is the CronJob's scheduled
date, read from its Job's name (``<cronjob>-<minutes since the epoch>``, given with
``--job-name``), so a pod that restarts after midnight still belongs to its night. The output
lease of the label pipeline stays the last guard against two writers. Exit code: 0 when the
night's job succeeded.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
import time

PREFIX = "tubeflow-nightly"
ACTIVE = {"PENDING", "RUNNING"}


def night_of(job_name: str | None, now: dt.datetime | None = None) -> str:
    """The night a run belongs to: the scheduled date in a CronJob Job's name, else today (UTC)."""
    match = re.search(r"-(\d{7,})$", job_name or "")
    if match:
        return dt.datetime.fromtimestamp(int(match.group(1)) * 60, dt.timezone.utc).date().isoformat()
    return (now or dt.datetime.now(dt.timezone.utc)).date().isoformat()


def submission_id(night: str, attempt: int) -> str:
    return f"{PREFIX}-{night}-{attempt}"


def night_jobs(client, night: str) -> dict[int, str]:
    """Attempt number → status of this night's jobs on the job server."""
    pattern = re.compile(rf"^{re.escape(PREFIX)}-{re.escape(night)}-(\d+)$")
    out = {}
    for job in client.list_jobs():
        match = pattern.match(job.submission_id or "")
        if match:
            out[int(match.group(1))] = str(getattr(job.status, "value", job.status))
    return out


def decide(jobs: dict[int, str], attempts: int) -> tuple[str, int]:
    """What to do given this night's jobs: ("follow" | "done" | "submit" | "give-up", attempt)."""
    if not jobs:
        return "submit", 1
    last = max(jobs)
    status = jobs[last]
    if status in ACTIVE:
        return "follow", last
    if status == "SUCCEEDED":
        return "done", last
    return ("submit", last + 1) if last < attempts else ("give-up", last)


def follow(client, job_id: str, out=sys.stdout, poll_s: float = 5.0) -> str:
    """Print the job's logs until it ends; its final status."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as exc:  # the log stream broke (head restart, network): fall back to polling
        print(f"nightly_submit: log stream of {job_id} ended ({exc}); polling its status", file=sys.stderr)
    while True:
        status = client.get_job_status(job_id)
        status = str(getattr(status, "value", status))
        if status not in ACTIVE:
            return status
        time.sleep(poll_s)


def run(client, entrypoint: str, night: str, attempts: int, runtime_env: dict | None, log=print) -> int:
    """Submit or re-attach to this night's job and follow it; the exit code."""
    for _ in range(attempts + 1):  # each pass either ends or moves to a later attempt
        action, attempt = decide(night_jobs(client, night), attempts)
        job_id = submission_id(night, attempt)
        if action == "done":
            log(f"nightly_submit: {job_id} already succeeded; nothing to do")
            return 0
        if action == "give-up":
            log(f"nightly_submit: {job_id} failed and {attempts} attempt(s) are used up")
            return 1
        if action == "submit":
            try:
                client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env)
                log(f"nightly_submit: submitted {job_id}")
            except RuntimeError as exc:  # another submitter took this id first: follow that one
                if job_id not in {job.submission_id for job in client.list_jobs()}:
                    raise
                log(f"nightly_submit: {job_id} was submitted by another pod ({exc}); following it")
        else:
            log(f"nightly_submit: {job_id} is {night_jobs(client, night)[attempt].lower()}; following it")
        status = follow(client, job_id)
        log(f"nightly_submit: {job_id} {status.lower()}")
        if status == "SUCCEEDED":
            return 0
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("nightly_submit: give the job's command after --", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m cluster.nightly_submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="job server, e.g. http://tubeflow-head-svc:8265")
    parser.add_argument("--night", default=None, help="the night (YYYY-MM-DD); default: from --job-name, else today")
    parser.add_argument("--job-name", default=None, help="the CronJob's Job name (<cronjob>-<scheduled minute>)")
    parser.add_argument("--attempts", type=int, default=2, help="jobs per night at most (default 2)")
    parser.add_argument("--working-dir", default=None, help="code shipped with the job (runtime_env working_dir)")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        print("nightly_submit: give the job's command after --", file=sys.stderr)
        return 2
    import shlex

    from ray.job_submission import JobSubmissionClient

    from cluster.connect import runtime_env

    night = args.night or night_of(args.job_name)
    return run(JobSubmissionClient(args.address), shlex.join(command), night, args.attempts,
               runtime_env(args.working_dir))


if __name__ == "__main__":
    raise SystemExit(main())
