"""The part of Hydra that mnist-cli uses beyond its documented API: the exception of a failed job.

JobReturn.return_value re-raises it and first writes its own "Error executing job" line to stderr;
the sweep wants the exception quietly, to record it in the job's run folder as one line.
tests/search/test_hydra_internals.py fails, naming Hydra and this file, when an upgrade changes it.
"""

from __future__ import annotations


def job_error(job) -> BaseException:
    """The exception a FAILED job raised (JobReturn._return_value, where Hydra's run_job keeps it)."""
    return job._return_value
