"""Hydra's private part that search/hydra_internals.py uses: the test names Hydra and the file to
update when an upgrade changes it."""

from __future__ import annotations

import hydra
from hydra.core.utils import JobReturn, JobStatus

from mnist_cli.search.hydra_internals import job_error


def test_a_failed_jobs_exception_is_kept_in_job_return_value(capsys):
    changed = f"Hydra {hydra.__version__} no longer keeps a failed job's exception in JobReturn._return_value"
    error = ValueError("boom")
    job = JobReturn()
    job.return_value = error  # as hydra.core.utils.run_job stores what the task raised
    job.status = JobStatus.FAILED
    assert "_return_value" in vars(job), f"{changed}; update mnist_cli/search/hydra_internals.py"
    assert job_error(job) is error, f"{changed}; update mnist_cli/search/hydra_internals.py"
    assert capsys.readouterr().err == ""  # quietly, unlike JobReturn.return_value
