"""Every `mnist` command line of README.md and docs/*.md, run for real, so the pages cannot drift from the tool.

The lines come from the ```bash blocks and the `run:` steps of YAML examples of the README and then of each
docs page in the order of mkdocs.yml's nav, one test per line (a line on several pages once), all in one folder
(later lines use what earlier ones made: `latest`, sweeps). A training line gets a tiny dataset and one epoch
unless it says otherwise; the pages' placeholders (a run folder, a sweep folder, path/to/any.pt, digit.png,
photos/, a.png) are real files there. A `mnist serve` line runs on a free port, gets every page's curl lines,
and is stopped with Ctrl-C (serve_line). A line that cannot run here is listed below with its reason;
test_every_mnist_line_is_collected_and_every_listed_line_exists fails when a line escapes both, or a listed
one is gone from the pages.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import yaml
from image_folders import write_image_folder
from PIL import Image

from conftest import MNIST_COMMAND, run_mnist, start_mnist, synthetic_glyphs
from forked_mnist import MNIST_ENTRY, TORCHRUN_ENTRY, run_forked

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def nav_pages(nav) -> List[str]:
    """The docs pages mkdocs.yml's nav lists, in its order (sections flattened)."""
    pages = []
    for entry in nav:
        for item in entry.values() if isinstance(entry, dict) else [entry]:
            pages += nav_pages(item) if isinstance(item, list) else [item]
    return pages


# The README, then every docs page in the site's order; a page missing from the nav comes last (and
# test_docs.py fails on it), so no page's lines escape.
NAV = [ROOT / "docs" / page for page in nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])]
PAGES = [README, *NAV, *sorted(set((ROOT / "docs").glob("*.md")) - set(NAV))]


def pages_text() -> str:
    """The README and every docs page, one after another."""
    return "\n".join(page.read_text() for page in PAGES)


TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

# The pages' placeholder folders, and what they become here (fixtures below).
RUN_PLACEHOLDER = "outputs/train/2026-11-23/10-15-02-ab12cd"
SWEEP_PLACEHOLDER = "outputs/multirun/2026-11-23/10-20-11-x9f2"
TRAINED = ["model=mlp", "epochs=1", "data.limit=300", "data.val_size=60", "batch_size=60", "device=cpu"]

# Lines of the pages that cannot run on this machine, and why.
SKIP = {
    "torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=host0:29500 -m mnist_cli"
    " train model=cnn batch_size=1024": "multi-node: needs a second machine at host0:29500 (the --standalone lines run)",
    "srun torchrun --standalone --nproc_per_node=4 -m mnist_cli train model=cnn batch_size=512": "needs a SLURM allocation (srun); the same torchrun line runs without srun",
}
# Lines that need a SLURM cluster: composed with --cfg all instead (first value of each swept key).
COMPOSE_ONLY = {
    "mnist train -m hydra/launcher=slurm hydra.launcher.partition=gpu model=mlp,lenet,cnn optimizer=sgd,adam": "submits to a SLURM cluster",
}
# Lines that ask for device=cuda: skipped without a GPU, run tiny with one.
NEEDS_CUDA = {"mnist train experiment=speedrun": "the GPU preset sets device=cuda"}

SEPARATOR = re.compile(r"[;&|()<>]+")  # a shlex punctuation token: &&, ||, ;, |
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def fenced_lines(markdown: str) -> List[Tuple[str, str]]:
    """(language, line) for every line of every fenced code block, continuation lines joined;
    a YAML `run:` step is given as its command."""
    lines = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", markdown, re.M | re.S):
        for line in body.replace("\\\n", " ").splitlines():
            step = re.match(r"\s*(?:-\s*)?run:\s*(.*)", line) if language == "yaml" else None
            lines.append((language, step.group(1) if step else line))
    return lines


def words(line: str) -> List[str]:
    """The line split the way a shell splits it, `# comment` dropped; &&, ; and | are words of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes (a YAML line): words are enough to spot `mnist`
        return line.split("#")[0].split()


def commands(line: str) -> List[List[str]]:
    """The simple commands of a line: `a && b; c` -> [a, b, c]."""
    parts, part = [], []
    for word in words(line) + [";"]:
        if SEPARATOR.fullmatch(word):
            if part:
                parts.append(part)
            part = []
        else:
            part.append(word)
    return parts


def invokes_mnist(command: List[str]) -> bool:
    """`mnist ...` (after any VAR=value), or anything running `-m mnist_cli` (torchrun, python, srun)."""
    program = next((w for w in command if not ASSIGNMENT.match(w)), "")
    return program == "mnist" or program.endswith("/mnist") or "-m mnist_cli" in " ".join(command)


def mentions_mnist(command: List[str]) -> bool:
    return any(w in ("mnist", "mnist_cli") or w.endswith("/mnist") for w in command)


def page_commands() -> Dict[str, List[str]]:
    """Every command of the README and docs pages that runs mnist, once each, in page order: text -> words."""
    found = {}
    for language, line in fenced_lines(pages_text()):
        if language in ("bash", "yaml"):
            for command in filter(invokes_mnist, commands(line)):
                found.setdefault(" ".join(command), command)
    return found


COMMANDS = page_commands()


def test_every_mnist_line_is_collected_and_every_listed_line_exists():
    mentioned = {" ".join(c) for _, line in fenced_lines(pages_text()) for c in commands(line) if mentions_mnist(c)}
    assert mentioned - set(COMMANDS) == set(), "README or docs code that runs mnist in a way this test does not collect"
    listed = {*SKIP, *COMPOSE_ONLY, *NEEDS_CUDA}
    assert listed - set(COMMANDS) == set(), "listed here but no longer in the README or docs: remove them"
    in_readme = {
        " ".join(c) for _, line in fenced_lines(README.read_text()) for c in commands(line) if invokes_mnist(c)
    }
    assert len(in_readme) >= 10 and len(COMMANDS) >= 40, "the README's or the docs' code blocks were not found"


# --- what the lines run on -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def cli_env(cli_env, family_data_root) -> dict:
    """conftest's environment, its data root also holding KMNIST, EMNIST and QMNIST (docs/datasets.md's lines)."""
    return dict(cli_env, MNIST_DATA_ROOT=str(family_data_root))


@pytest.fixture(scope="module")
def trained_run(workdir, cli_env) -> Path:
    """The run the pages' run folder names; also `latest` until a page's line trains."""
    result = run_mnist("train", *TRAINED, cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sweep_folder(workdir, cli_env) -> Path:
    """The sweep the pages' sweep folder names: the newest one a page's line made, else two tiny jobs."""
    finished = sorted(
        (p.parent for p in (workdir / "outputs" / "multirun").glob("*/*/leaderboard.json")),
        key=lambda p: p.stat().st_mtime,
    )
    if finished:
        return finished[-1]
    result = run_mnist("train", "-m", "optimizer=sgd,adam", *TRAINED, cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    (folder,) = (workdir / "outputs" / "multirun").glob("*/*")
    return folder


def save_glyph(image: np.ndarray, path: Path, size: int, light_background: bool = False, mode: str = "L") -> None:
    picture = Image.fromarray(255 - image if light_background else image).resize((size, size))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.convert(mode).save(path)


@pytest.fixture(scope="module")
def readme_files(workdir, trained_run) -> Path:
    """path/to/any.pt, path/to/best.pt, digit.png, a.png, photos/ (one image in a subfolder) and scans/ (an
    image folder) in workdir."""
    for name in ("any.pt", "best.pt"):
        (workdir / "path" / "to").mkdir(parents=True, exist_ok=True)
        shutil.copy(trained_run / "checkpoints" / "best.pt", workdir / "path" / "to" / name)
    images, _ = synthetic_glyphs(4, seed=7, glyphs="0123456789")
    save_glyph(images[0], workdir / "digit.png", 28)
    save_glyph(images[1], workdir / "a.png", 120, light_background=True)  # dark ink on white, as on paper
    save_glyph(images[2], workdir / "photos" / "one.png", 64, mode="RGB")
    save_glyph(images[3], workdir / "photos" / "more" / "two.jpg", 90, light_background=True, mode="RGB")
    write_image_folder(workdir / "scans", 50)  # dataset.path=scans: four class folders of 50 scans
    return workdir


# --- how a line is made cheap ------------------------------------------------------------------------------


def value(args: List[str], key: str):
    """The value the last `key=...` in args gives, or None."""
    given = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+~") == key]
    return given[-1] if given else None


def with_value(args: List[str], key: str, new: str) -> List[str]:
    """args with key=new in place of key's value, or appended when key is not given."""
    if value(args, key) is None:
        return args + [f"{key}={new}"]
    return [f"{key}={new}" if a.split("=", 1)[0] == key else a for a in args]


def epochs_of(run: str, workdir: Path) -> List[int]:
    """The epochs in the metrics.jsonl of the run resume=<run> names, in file order."""
    path = workdir / "outputs" / "train" / "latest" if run == "latest" else workdir / run
    folder = path.resolve().parent.parent if path.suffix == ".pt" else path.resolve()
    return [json.loads(row)["epoch"] for row in (folder / "metrics.jsonl").read_text().splitlines() if row]


def tiny_train(line: str, args: List[str], workdir: Path) -> List[str]:
    """The overrides of a train line, made cheap: little data, one epoch, the CPU."""
    if "--help" in args or "--cfg" in args:
        return args
    if line not in NEEDS_CUDA:
        args = with_value(args, "device", "cpu")  # device=auto would pick a GPU where there is one
    if value(args, "resume") is not None:
        # A finished run continues only with more epochs: one more than it has (epochs=20 too, to save
        # 19 epochs); resume= refuses data.* keys, so the run's own tiny data is used.
        return with_value(args, "epochs", str(max(epochs_of(value(args, "resume"), workdir)) + 1))
    if "-m" in args:  # a sweep keeps the first two values of each swept key: 12 jobs -> 4, the same machinery
        args = [",".join(a.split(",")[:2]) if "=" in a and "[" not in a and "(" not in a else a for a in args]
    if value(args, "hparams_search") == "optuna":
        args = with_value(args, "hydra.sweeper.n_trials", "2")  # 20 or 5 trials cut to 2: the same machinery
    if value(args, "dataset") == "folder":  # the pages' folder is small already; data.val_size is refused there
        pass
    elif value(args, "data.limit") is None:  # a line giving its own data.limit runs as the page has it
        batch = int(value(args, "batch_size") or 0)
        batch = 512 if line in NEEDS_CUDA else batch  # the GPU preset's batch
        # 260 training images: one batch of the optuna search's largest batch_size (256)
        args = args + [f"data.limit={max(320, batch + 60)}", "data.val_size=60"]
    if value(args, "epochs") is None:
        args = args + ["epochs=1"]
    return args


def composed_only(args: List[str]) -> List[str]:
    """A sweep line as one composition: no -m, the first value of each swept key, --cfg all."""
    args = [a for a in args if a not in ("-m", "--multirun")]
    args = [a.split(",")[0] if "=" in a and "[" not in a else a for a in args]
    return args + ["--cfg", "all"]


def prepare(line: str, places: Dict[str, Path], workdir: Path, env: dict) -> Tuple[List[str], dict]:
    """(argv, env) that run the page's line in workdir; places: the real run and sweep folders."""
    parts, env = COMMANDS[line], dict(env)
    while ASSIGNMENT.match(parts[0]):  # VAR=value mnist ...: the pages' data folder is the synthetic one
        name, given = parts[0].split("=", 1)
        env[name] = env["MNIST_DATA_ROOT"] if name == "MNIST_DATA_ROOT" else given
        parts = parts[1:]
    for placeholder, key in ((RUN_PLACEHOLDER, "run"), (SWEEP_PLACEHOLDER, "sweep")):
        if key in places:
            parts = [w.replace(placeholder, os.path.relpath(places[key], workdir)) for w in parts]
    program, rest = parts[0], parts[1:]
    if program == "torchrun":
        # 4 processes cut to 2 on this 2-core machine, one thread each
        rest = [re.sub(r"^--nproc_per_node=\d+$", "--nproc_per_node=2", w) for w in rest]
        env["OMP_NUM_THREADS"] = "1"
        program = TORCHRUN
    else:
        program = MNIST_COMMAND
    start = rest.index("mnist_cli") + 1 if "mnist_cli" in rest else 0  # after torchrun's own options
    head, subcommand, args = rest[:start], rest[start], rest[start + 1 :]
    if line in COMPOSE_ONLY:
        args = composed_only(args)
    elif subcommand == "train":
        args = tiny_train(line, args, workdir)
    return [program, *head, subcommand, *args], env


# --- the lines ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("line", list(COMMANDS), ids=list(COMMANDS))
def test_readme_line(line, request, workdir, trained_run, readme_files, cli_env):
    if line in SKIP:
        pytest.skip(SKIP[line])
    if line in NEEDS_CUDA:
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"{NEEDS_CUDA[line]} and no CUDA GPU is available")
    places = {"run": trained_run}
    if SWEEP_PLACEHOLDER in line:
        places["sweep"] = request.getfixturevalue("sweep_folder")
    argv, env = prepare(line, places, workdir, cli_env)
    if argv[1] == "serve":  # runs until stopped: started, asked as the pages' curl lines ask, stopped
        return serve_line(argv, workdir, env)
    entry = TORCHRUN_ENTRY if argv[0] == TORCHRUN else MNIST_ENTRY  # torchrun's workers are new processes
    before = folders(workdir)
    result = run_forked(argv[0], argv[1:], workdir, env, timeout=300, entry=entry)
    shown = f"ran: {shlex.join([Path(argv[0]).name, *argv[1:]])}\nexit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr + result.stdout, shown
    gates = [gate for gate in ("min_accuracy", "max_ece") if "eval" in argv and value(argv, gate) is not None]
    assert result.returncode in ((0, 1) if gates else (0,)), shown  # a gate missed by a tiny run: exit 1, documented
    if result.returncode == 1:
        said = {"min_accuracy": "is below min_accuracy", "max_ece": "is above max_ece"}
        assert any(said[gate] in result.stderr for gate in gates), shown
    if value(argv, "format") == "json" and ("eval" in argv or "report" in argv):
        json.loads(result.stdout)  # one JSON document on stdout, nothing else
    if line in COMPOSE_ONLY:  # each hydra.launcher.KEY=VALUE of the line is in the composed config
        for key, given in (a.split("=", 1) for a in argv if a.startswith("hydra.launcher.")):
            assert f"{key.rsplit('.', 1)[1]}: {given}" in result.stdout, shown
    if "train" in argv and "--help" not in argv and "--cfg" not in argv:
        keeps_its_promises(argv, result.stdout, workdir, before)


# --- a server line --------------------------------------------------------------------------------------

LOCAL = re.compile(r"http://127\.0\.0\.1:8000")  # where the pages' curl lines send their requests


def serve_line(argv: List[str], workdir: Path, env: dict) -> None:
    """Run a `mnist serve` line of a page for real, on a free port instead of the line's (port=0; parallel tests
    never collide), run each curl line of the pages against it, then Ctrl-C: exit 0, no traceback."""
    assert value(argv, "host") in (None, "127.0.0.1"), "a serve line is run here only on 127.0.0.1"
    out = workdir / "serve.out"
    server = start_mnist(*with_value(argv[1:], "port", "0"), cwd=workdir, env=env, stdout=out)
    try:
        for _ in range(600):  # the first line names the URL once the model is loaded and the port listens
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/ ", out.read_text() if out.exists() else "")
            if found or server.poll() is not None:
                break
            time.sleep(0.1)
        assert found, "mnist serve did not start"
        url = found.group(1)
        curls = [
            line
            for language, line in fenced_lines(pages_text())
            if language == "bash" and line.lstrip().startswith("curl ")
        ]
        assert curls, "neither the README nor the docs show a curl line for mnist serve"
        for curl in curls:
            done = subprocess.run(
                LOCAL.sub(url, curl.split(" #")[0]), shell=True, cwd=workdir, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, f"{curl}: {done.stderr}"
            answer = json.loads(done.stdout)
            assert "error" not in answer and (
                answer.get("predictions") or answer.get("classes") or answer.get("status")
            ), answer
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "Traceback" not in err, err
    assert out.read_text().strip().splitlines()[-1].startswith("mnist serve: stopped on SIGINT;")


# --- what the pages say a training line does ------------------------------------------------------------


def folders(workdir: Path) -> Dict[str, set]:
    """The run folders and sweep folders under workdir/outputs (not what outputs/train/latest links to)."""
    return {
        kind: {p for p in (workdir / "outputs" / kind).glob("*/*") if p.is_dir() and p.parent.name != "latest"}
        for kind in ("train", "multirun")
    }


def jobs_of(argv: List[str]) -> int:
    """How many jobs a sweep line starts: its trial count, or the product of its swept values."""
    if value(argv, "hparams_search") is not None:
        return int(value(argv, "hydra.sweeper.n_trials"))
    counts = [
        len(a.split("=", 1)[1].split(","))
        for a in argv[argv.index("train") :]
        if "=" in a and "[" not in a and "(" not in a
    ]
    return int(np.prod(counts))


def keeps_its_promises(argv: List[str], stdout: str, workdir: Path, before: Dict[str, set]) -> None:
    """What the pages promise of a training line, checked on what it wrote."""
    resumed = value(argv, "resume")
    new = {kind: found - before[kind] for kind, found in folders(workdir).items()}
    if resumed is not None:  # the run continues in its own folder and trains up to the epochs asked, each once
        assert new == {"train": set(), "multirun": set()}, new
        assert epochs_of(resumed, workdir) == list(range(1, int(value(argv, "epochs")) + 1))
    elif {"-m", "--multirun"} & set(argv[argv.index("train") :]) or value(argv, "hparams_search") is not None:
        # one sweep folder, every job in its leaderboard
        (sweep,) = new["multirun"]
        rows = json.loads((sweep / "leaderboard.json").read_text())["rows"]
        assert len(rows) == jobs_of(argv) and all(r["status"] == "completed" for r in rows), rows
        n_jobs = value(argv, "hydra.launcher.n_jobs")
        if n_jobs is not None:  # "each job gets cores / n_jobs torch threads"
            threads = {json.loads(p.read_text())["threads"] for p in sweep.glob("*/summary.json")}
            assert threads == {max(1, (os.cpu_count() or 1) // int(n_jobs))}
    else:  # one new run folder; under torchrun only rank 0 writes it and speaks
        (run,) = new["train"]
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        if argv[0] == TORCHRUN:
            assert stdout.count("run folder:") == 1, stdout


def test_every_test_the_readme_names_exists():
    """The Bad input and Faults survived tables (docs/bad-input.md) name the test behind each row; any page may."""
    named = set(re.findall(r"(?<![.\w])(test_\w+?)(?:\[|`)", pages_text()))  # not a key: dataset.test_time_flip
    defined = set(
        re.findall(r"^def (test_\w+)", "".join(p.read_text() for p in Path(__file__).parent.rglob("test_*.py")), re.M)
    )
    assert len(named) >= 10 and named - defined == set()
    ellipsed = set(re.findall(r"`…(\w+)\[", pages_text()))  # `…leaves_nothing[case]`: the end of a named test
    assert all(any(d.endswith(e) for d in defined) for e in ellipsed), ellipsed
