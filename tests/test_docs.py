"""The README and docs/*.md against the code: the site builds with no broken link, and what the code knows
(the checkpoint format, the config groups, their options and defaults, the subcommands, the exit codes, the
tree) is what the pages say. The pages' command lines are run by test_readme.py."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import yaml
from test_readme import nav_pages

import mnist_cli
from mnist_cli import streams
from mnist_cli.runs import checkpoints

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
CONF = ROOT / "conf"
BIN = Path(sys.executable).parent


def page(name: str) -> str:
    return (DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """The text under a `## heading`, up to the next heading of that level or higher."""
    start = text.index(f"\n## {heading}\n") + len(heading) + 5
    end = re.search(r"^#{1,2} ", text[start:], re.M)
    return text[start : start + end.start()] if end else text[start:]


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and mkdocs' toc both make it."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def anchors(text: str) -> set:
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


# --- the site ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_site_builds_with_no_broken_link_or_anchor(tmp_path):
    """`mkdocs build --strict` (mkdocs.yml also validates anchors): a link to a missing page or heading fails."""
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(BIN), "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "serve.png").is_file() and (tmp_path / "site" / "bad-input" / "index.html").is_file()


def test_every_page_is_in_the_nav():
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))


def test_the_readmes_links_into_docs_lead_to_a_page_and_heading():
    """mkdocs does not read the README; on GitHub its relative links must still land."""
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", README)
    assert len(links) >= 12
    for target, anchor in links:
        assert (ROOT / target).is_file(), target
        if anchor:
            assert anchor in anchors((ROOT / target).read_text()), f"{target}#{anchor}"
    linked = {Path(t).name for t, _ in links if t.endswith(".md")}
    assert linked == {p.name for p in DOCS.glob("*.md")} - {"index.md"}, "the README links every page"


def test_no_page_names_this_projects_ci_data_folder_as_a_users_path():
    for name, text in [("README.md", README), *((p.name, p.read_text()) for p in DOCS.glob("*.md"))]:
        assert "shared/data" not in text, f"{name}: use /path/to/data or ~/data in examples"


def test_the_readme_stays_a_doorway():
    assert len(README.splitlines()) <= 250, "the README is the doorway; move the detail to docs/"


# --- what the code knows ------------------------------------------------------------------------------------


def test_the_checkpoint_format_and_its_keys_are_the_codes():
    text = section(page("run-folders.md"), "Checkpoints")
    assert re.findall(r"`format_version` (\d+)", text) == [str(checkpoints.VERSION)]
    assert f"`{checkpoints.FORMAT}`" in text
    keys = set(re.findall(r'^ {8}"(\w+)":', inspect.getsource(checkpoints.snapshot), re.M))  # the dict it returns
    assert "format_version" in keys and "model" in keys
    named = set(re.findall(r"`(\w+)`", text))
    assert keys - named == set(), "checkpoint keys the page does not name"
    everywhere = README + "".join(p.read_text() for p in DOCS.glob("*.md"))
    stated = {int(v) for v in re.findall(r"format version (\d+)", everywhere, re.I)}
    assert stated <= {checkpoints.VERSION}, "a page states another checkpoint format version"


def groups() -> Dict[str, set]:
    """conf/<group>/*.yaml: each group the user chooses from, and its options."""
    return {
        folder.name: {f.stem for f in folder.glob("*.yaml")}
        for folder in CONF.iterdir()
        if folder.is_dir() and folder.name != "hydra" and any(folder.glob("*.yaml"))
    }


def train_defaults() -> Dict[str, str]:
    """conf/train.yaml's defaults list: group -> its default option ('none' where it is null)."""
    entries = yaml.safe_load((CONF / "train.yaml").read_text())["defaults"]
    return {k: "none" if v is None else v for entry in entries if isinstance(entry, dict) for k, v in entry.items()}


@pytest.mark.parametrize("name", ["README.md", "docs/configuration.md"])
def test_the_groups_table_lists_every_group_its_options_and_default(name):
    text = (ROOT / name).read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| (.*?) \|$", text, re.M)
    table = {group: (options, default) for group, options, default in rows if group in groups()}
    assert set(table) == set(groups()), f"{name}: groups missing from the table"
    defaults = train_defaults()
    for group, (options, default) in table.items():
        assert set(re.findall(r"`(\w+)`", options)) == groups()[group], f"{name}: the options of {group}"
        assert re.match(r"`?(\w+)`?", default).group(1) == defaults[group], f"{name}: the default of {group}"


def test_the_defaults_the_pages_state_are_conf_train_yaml():
    train = yaml.safe_load((CONF / "train.yaml").read_text())
    values = {**train, **train_defaults()}
    line = re.search(r"`mnist train` with no overrides: `([^`]+)`", README).group(1)
    stated = dict(pair.split("=", 1) for pair in line.split())
    assert len(stated) >= 8
    for key, given in stated.items():
        assert str(values[key]) == given if isinstance(values[key], str) else values[key] == yaml.safe_load(given), key
    results = re.search(r"Default configs \((\d+) epochs, (\w+) \+ (\w+), batch (\d+)\)", page("results.md")).groups()
    assert results == (str(train["epochs"]), values["optimizer"], values["scheduler"], str(train["batch_size"]))
    commented = re.search(r"# defaults: MNIST, (\w+), (\w+), (\w+), device=(\w+)", README).groups()
    assert commented == (values["model"], values["optimizer"], values["scheduler"], train["device"])


def commands() -> dict:
    """The subcommands, from whichever module of mnist_cli.cli defines COMMANDS."""
    import mnist_cli.cli

    for info in pkgutil.iter_modules(mnist_cli.cli.__path__, "mnist_cli.cli."):
        found = getattr(importlib.import_module(info.name), "COMMANDS", None)
        if found:
            return found
    raise AssertionError("no COMMANDS in mnist_cli.cli")


def test_the_subcommands_are_the_codes():
    names = list(commands())
    readme = re.search(r"The subcommands are (.*?);", README, re.S).group(1)
    assert re.findall(r"`(\w+)`", readme) == names
    refused = re.search(r"'fit' is not a command; choose one of: ([\w, ]+) \(see", page("bad-input.md")).group(1)
    assert refused.split(", ") == names
    done = subprocess.run([str(BIN / "mnist"), "fit"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"'fit' is not a command; choose one of: {refused} (see" in done.stderr


def test_the_exit_codes_are_the_codes():
    table = dict(re.findall(r"^\| (\d+) \| (.*) \|$", section(page("evaluation.md"), "Exit codes"), re.M))
    assert set(map(int, table)) == {0, 1, 2, 74, 130, 141, 143}
    readme = re.search(r"Exit codes: (.*?)\(\[all of them\]", README, re.S).group(1)
    assert {int(c) for c in re.findall(r"\b(\d+) ", readme)} <= set(map(int, table))
    assert streams.EX_IOERR == 74
    assert 128 + signal.SIGPIPE == 141 and 128 + signal.SIGINT == 130 and 128 + signal.SIGTERM == 143
    code = "".join(p.read_text() for p in Path(mnist_cli.__file__).parent.rglob("*.py"))
    for exit_code in (1, 2, 130, 141):  # written as such where a command ends
        assert re.search(rf"(?:return|exit\()\s*{exit_code}\b", code), f"exit code {exit_code} is not in mnist_cli"
    assert "128 + " in code, "SIGTERM's 143 is 128 + the signal's number"


def test_the_tree_map_names_every_package_and_only_modules_that_exist():
    text = section(page("development.md"), "The tree")
    rows = dict(re.findall(r"^\| `(mnist_cli/\w+/)` \| (.*) \|$", text, re.M))
    package = Path(mnist_cli.__file__).parent
    on_disk = {f"mnist_cli/{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert set(rows) == on_disk
    for folder, what in rows.items():
        for module in re.findall(r"`(\w+\.(?:py|html))`", what):
            assert (ROOT / folder / module).is_file(), f"{folder}{module} is named in development.md but is gone"
    top = re.search(r"^\| `mnist_cli/` \| (.*) \|$", text, re.M).group(1)
    modules = {p.name for p in package.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert set(re.findall(r"`(\w+\.py)`", top)) == modules
