"""`vqpipe` jobs in a subprocess of their own session (their own local Ray), for tests that
kill, interrupt or watch a job while it runs."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_job(
    tmp_path: Path,
    argv: list[str],
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    prelude: str = "",
) -> subprocess.Popen:
    """``vqpipe.cli.main(argv)`` in a new session (``prefix``: a wrapper such as ``capsh``;
    ``prelude``: one line of Python run first), its output to a file (a pipe could fill and
    block the job): read it with :func:`job_output`."""
    script = textwrap.dedent(
        f"""
        import sys, ray
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        {prelude}
        from vqpipe.cli import main
        sys.exit(main({argv!r}))
        """
    )
    full_env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "RAY_ADDRESS": "", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    log = open(tmp_path / f"job-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115 (kept with the job)
    job = subprocess.Popen(
        [*prefix, sys.executable, "-c", script],
        cwd=REPO,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    job.log = log
    return job


def job_output(job: subprocess.Popen) -> str:
    job.log.seek(0)
    return job.log.read()


def wait_for(predicate, job: subprocess.Popen, timeout: float = 240.0) -> None:
    """Until ``predicate()`` holds; fails if the job ends first or after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if job.poll() is not None:
            raise AssertionError(f"the job ended early: {job_output(job)[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting")
