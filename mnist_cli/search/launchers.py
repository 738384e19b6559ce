"""What mnist-cli needs to know of Hydra's launchers: how many jobs one runs at once, and whether they
share this machine's cores. Imports nothing heavy (the CLI asks before torch is imported).
"""

from __future__ import annotations

import os


def jobs_at_once(launcher) -> int:
    """How many jobs the `hydra.launcher` config runs at once: joblib's n_jobs (-1: one per core),
    submitit's array_parallelism (at most one per core for the local one), else 1."""
    target = str(launcher.get("_target_", ""))
    cores = os.cpu_count() or 1
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs", -1) or 1
        return cores if n_jobs < 0 else n_jobs
    if "submitit" in target:
        width = int(launcher.get("array_parallelism", 1) or 1)
        return min(width, cores) if on_this_machine(launcher) else width
    return 1


def on_this_machine(launcher) -> bool:
    """Whether the launcher's jobs run here, side by side (joblib, submitit_local), sharing its cores."""
    target = str(launcher.get("_target_", ""))
    return "joblib" in target or target.endswith("LocalLauncher")
