"""One run folder read as a leaderboard record: its summary, epochs, stored config and what a resume
changed, read tolerantly (a damaged file makes a row that says why), and the experiment it belongs to."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mnist_cli.runs import metrics
from mnist_cli.runs.folder import METRICS, SUMMARY, RunFolder

# Config keys (and key prefixes) that do not change what a run learns: runs alike in everything else
# but seed are one experiment. Not resume.CHANGEABLE: epochs and precision may change on resume, and
# they change the numbers.
NOT_THE_EXPERIMENT = (
    "seed",
    "device",
    "threads",
    "eval_batch_size",
    "data.root",
    "data.download",
    "checkpoint",
    "outputs_dir",
    "resume",
    "logger",
    "optimized_metric",
    "dataset.workers",  # an image folder's decoding processes and cache: the same images either way
    "dataset.cache",
)


def natural_key(text: str) -> list:
    """`text` as a sort key in which whole numbers compare as numbers: job 2 before job 11, seed 2 before 10."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]


def _through_link(run: Path, top: Path) -> bool:
    folder = top
    for part in run.relative_to(top).parts:
        folder = folder / part
        if folder.is_symlink():
            return True
    return False


def find_runs(path: Path) -> List[Path]:
    """Run folders at or below `path` (which may itself be a link), in natural order: folders holding
    summary.json or metrics.jsonl. A link below `path` (outputs/train/latest) is skipped: its run is
    found where it really is, once."""
    path = Path(path).resolve()
    found = {p.parent for name in (SUMMARY, METRICS) for p in path.rglob(name)}
    return sorted((run for run in found if not _through_link(run, path)), key=lambda run: natural_key(str(run)))


def read_summary(run_dir: Path) -> Tuple[Dict, Optional[str]]:
    """(summary.json as a dict, {} when there is none or it is damaged; what is wrong with it, or None)."""
    try:
        text = RunFolder(run_dir).summary.read_text()
    except FileNotFoundError:
        return {}, None
    except OSError as error:
        return {}, f"summary.json could not be read ({error.strerror})"
    except ValueError:  # not UTF-8
        return {}, "summary.json is not valid JSON"
    if not text.strip():
        return {}, "summary.json is empty"
    try:
        summary = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return {}, "summary.json is not valid JSON"
    if not isinstance(summary, dict):
        return {}, "summary.json is not a JSON object"
    if not isinstance(summary.get("status"), str):
        return summary, "summary.json has no status"
    return summary, None


def read_epochs(run_dir: Path) -> Tuple[List[Dict], Optional[str]]:
    """(metrics.jsonl's readable rows; what is wrong with the file, or None). A null val_accuracy
    is no value (data.val_size=0); a missing one or a string is damage."""
    epochs, problem = metrics.read_epoch_file(run_dir)
    if problem:
        return epochs, problem
    for epoch in epochs:
        value = epoch.get("val_accuracy", "")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return epochs, f"metrics.jsonl epoch {epoch['epoch']} has no val_accuracy number"
    return epochs, None


_NO_FILE = object()


def _read_yaml(path: Path) -> Tuple[Any, Optional[str]]:
    """(the YAML document at `path`, _NO_FILE when there is none or None when it is damaged; what is
    wrong with it, or None)."""
    import yaml

    name = f"{path.parent.name}/{path.name}"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # C: fast
    try:
        text = path.read_text()
        # Hydra never writes aliases; nested ones expand exponentially (a few lines can hang the report)
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=loader)):
            return None, f"{name} holds YAML aliases, which Hydra never writes"
        return yaml.load(text, Loader=loader), None
    except FileNotFoundError:
        return _NO_FILE, None
    except OSError as error:
        return None, f"{name} could not be read ({error.strerror})"
    except (ValueError, yaml.YAMLError):
        return None, f"{name} is not valid YAML"


def _as_dict(items: List[str]) -> Dict[str, str]:
    """Overrides (`key=value`, `+key=value`) as {key: value}."""
    return {item.split("=", 1)[0].lstrip("+~"): item.split("=", 1)[1] for item in items if "=" in item}


def _is_overrides(items) -> bool:
    return isinstance(items, list) and all(isinstance(item, str) for item in items)


def read_overrides(run_dir: Path) -> Tuple[Dict[str, str], Optional[str]]:
    """(the command-line overrides of a run as {key: value} from .hydra/overrides.yaml, {} when
    there is none or it is damaged; what is wrong with it, or None)."""
    items, problem = _read_yaml(RunFolder(run_dir).hydra_overrides)
    if problem or items is _NO_FILE:
        return {}, problem
    if not _is_overrides(items or []):
        return {}, ".hydra/overrides.yaml is not a list of overrides"
    return _as_dict(items or []), None


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {key: value for k, v in node.items() for key, value in _flatten(v, f"{prefix}{k}.").items()}


def read_config(run_dir: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(the config a run started with, from .hydra/config.yaml, as {dotted key: value}; None when
    there is none or it is damaged; what is wrong with it, or None)."""
    config, problem = _read_yaml(RunFolder(run_dir).hydra_config)
    if problem or config is _NO_FILE:
        return None, problem
    if not isinstance(config, dict):
        return None, ".hydra/config.yaml is not a mapping of keys"
    return _flatten(config), None


def resume_changes(summary: Dict) -> Tuple[Dict[str, str], Optional[str]]:
    """(what resuming a run changed, as overrides {key: value}: what every resume gave besides resume=
    (summary.json's resumes; before that key, the last resume's resumed_with), a key given different
    values by different resumes as `bf16 then fp32`, and the planned epochs as the run last ran; what is
    wrong with summary.json's resumes or resumed_with, or None)."""
    if "resumed_with" not in summary and "resumes" not in summary:
        return {}, None
    if "resumed_with" in summary and not _is_overrides(summary["resumed_with"]):
        return {}, "summary.json's resumed_with is not a list of overrides"
    resumes = summary.get("resumes", [summary.get("resumed_with", [])])
    if not isinstance(resumes, list) or not all(_is_overrides(r) for r in resumes):
        return {}, "summary.json's resumes is not a list of override lists"
    values: Dict[str, List[str]] = {}
    for overrides in resumes:
        for key, value in _as_dict(overrides).items():
            if key != "resume" and values.setdefault(key, [value])[-1] != value:
                values[key].append(value)
    changes = {key: " then ".join(given) for key, given in values.items()}
    if isinstance(summary.get("epochs"), int) and not isinstance(summary["epochs"], bool):
        changes["epochs"] = str(summary["epochs"])
    return changes, None


def _without_other_keys(values: Dict[str, Any]) -> Dict[str, Any]:
    """`values` without the NOT_THE_EXPERIMENT keys and the keys below them."""
    return {
        k: v for k, v in values.items() if not any(k == name or k.startswith(name + ".") for name in NOT_THE_EXPERIMENT)
    }


def experiment(config: Optional[Dict[str, Any]], overrides: Dict[str, str], changes: Dict[str, str]) -> str:
    """What a run is, as text that is equal for runs alike but for seed: its stored config (for a run
    without one, its overrides) and what a resume changed in it, both without NOT_THE_EXPERIMENT keys.
    A run resumed with more epochs is not one trained that long from the start (its lr schedule
    changed midway), so the change stays apart from the config."""
    if config is None:
        base, changed = {**overrides, **changes}, {}
    else:
        base, changed = config, {k: v for k, v in changes.items() if str(config.get(k)) != v}
    return json.dumps([_without_other_keys(base), _without_other_keys(changed)], sort_keys=True, default=str)


def summary_of_epochs(epochs: List[Dict]) -> Dict:
    """What summary.json says about these epoch rows (best, final, wall_seconds): how an unfinished
    run is scored. Best is the first epoch with the highest val_accuracy, as in training."""
    if not epochs:
        return {}
    scored = [e for e in epochs if metrics.summary_value(e, "val_accuracy") is not None]
    seconds = [metrics.summary_value(e, "seconds") for e in epochs]
    return {
        "best": max(scored, key=lambda e: e["val_accuracy"], default=None),
        "final": epochs[-1],
        "wall_seconds": None if None in seconds else round(sum(seconds), 3),
    }


def run_record(run_dir: Path) -> Dict:
    """One leaderboard row for a run folder: run (absolute path), overrides (those a resume gave
    applied), seed, experiment, a column per summary metric, epochs_done, status and error. Each
    metric comes from summary.json, else from metrics.jsonl (unfinished runs); a damaged file makes
    status `damaged` with the reason in error, and keeps whatever could still be read."""
    summary, summary_problem = read_summary(run_dir)
    epochs, epochs_problem = read_epochs(run_dir)
    overrides, overrides_problem = read_overrides(run_dir)
    config, config_problem = read_config(run_dir)
    changes, changes_problem = resume_changes(summary)
    problem = summary_problem or epochs_problem or overrides_problem or config_problem or changes_problem
    from_epochs = summary_of_epochs(epochs)
    seed = overrides.get("seed") if config is None else config.get("seed")
    record = {
        "run": str(run_dir.resolve()),
        "overrides": {**overrides, **changes},
        "seed": None if seed is None else str(seed),
        "experiment": experiment(config, overrides, changes),
    }
    for metric in metrics.SUMMARY_METRICS.values():
        value = metrics.summary_value(summary, metric.name)
        record[metric.column] = value if value is not None else metrics.summary_value(from_epochs, metric.name)
    done = metrics.summary_value(summary, "epochs_completed")
    record["epochs_done"] = int(done) if done is not None else len(epochs)
    error = summary.get("error")
    record["status"] = "damaged" if problem else summary.get("status", "unfinished")
    record["error"] = problem or (None if error is None else str(error))
    return record
