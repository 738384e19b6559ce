"""One source for every value: the YAML under conf/ gives them, the schema in config/schema.py only names and
types them, docs/configuration.md agrees with both, every list of names written twice is checked against its
twin, and `--help` never imports torch."""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import initialize_config_module
from omegaconf import MISSING, OmegaConf

from mnist_cli.config.checks import refuse_unknown_keys
from mnist_cli.config.compatibility import FILLED_AS_BEFORE, NOT_FILLED_ON_RESUME, defaults_for
from mnist_cli.config.compose import compose
from mnist_cli.config.schema import CHOSEN_GROUPS, COMMAND_SCHEMAS, GROUP_SCHEMAS, OUTPUT_FORMATS, AugmentConfig
from mnist_cli.errors import UserError

CONF = importlib.resources.files("mnist_cli.conf")
README = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()  # the Config reference
OPTIONS = [(group, option) for group, options in GROUP_SCHEMAS.items() for option in options]


def schemas():
    """Every dataclass of the schema, nested sections included, once each."""
    seen, todo = [], [*COMMAND_SCHEMAS.values(), *(s for options in GROUP_SCHEMAS.values() for s in options.values())]
    while todo:
        schema = todo.pop()
        if schema not in seen:
            seen.append(schema)
            todo += [
                f.default_factory for f in dataclasses.fields(schema) if dataclasses.is_dataclass(f.default_factory)
            ]
    return seen


def keys(tree: dict, prefix: str = "") -> set:
    """The dotted keys of a nested dict, leaves only."""
    out = set()
    for name, value in tree.items():
        out |= keys(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}"}
    return out


def schema_keys(schema) -> set:
    return keys(OmegaConf.to_container(OmegaConf.structured(schema), throw_on_missing=False))


def yaml_file(name: str) -> dict:
    """conf/<name>.yaml as written, without its defaults list and hydra section."""
    tree = yaml.safe_load(CONF.joinpath(f"{name}.yaml").read_text())
    return {k: v for k, v in tree.items() if k not in ("defaults", "hydra")}


def test_the_schema_holds_names_and_types_only():
    with_values = [
        f"{schema.__name__}.{f.name}"
        for schema in schemas()
        for f in dataclasses.fields(schema)
        if f.default is not MISSING and not dataclasses.is_dataclass(f.default_factory)
    ]
    assert not with_values, f"give these their values in conf/*.yaml, not in config/schema.py: {with_values}"


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_every_option_yaml_gives_every_key_of_its_schema_and_no_other(group, option):
    raw = yaml.safe_load(CONF.joinpath(group, f"{option}.yaml").read_text())
    assert {f"/schema/{group}@_here_": option} in raw["defaults"], "the option file must merge onto its schema"
    values = {k: v for k, v in raw.items() if k != "defaults"}
    assert keys(values) == schema_keys(GROUP_SCHEMAS[group][option])
    assert "???" not in yaml.safe_dump(values) and values["name"] == option
    cfg = compose("train", [f"{group}={option}"])  # the values have the schema's types
    assert not OmegaConf.missing_keys(cfg)


@pytest.mark.parametrize("command", COMMAND_SCHEMAS)
def test_every_command_yaml_gives_every_key_of_its_schema_and_no_other(command):
    values = yaml_file(command)
    expected = {k for k in schema_keys(COMMAND_SCHEMAS[command]) if k.split(".")[0] not in GROUP_SCHEMAS}
    assert keys(values) == expected
    required = {k for k in keys(values) if OmegaConf.is_missing(OmegaConf.create(values), k)}
    assert required == (set() if command == "train" else {"run"}), "only run= is left for the user to give"


def yaml_options(group: str) -> set:
    """The options of a config group: the YAML files in conf/<group>/."""
    return {f.name[: -len(".yaml")] for f in CONF.joinpath(group).iterdir() if f.name.endswith(".yaml")}


@pytest.mark.parametrize("group", GROUP_SCHEMAS)
def test_each_group_folder_holds_exactly_the_options_the_schema_names(group):
    assert yaml_options(group) == set(GROUP_SCHEMAS[group]), f"conf/{group}/ and GROUP_SCHEMAS[{group!r}] disagree"


def test_every_group_a_command_line_picks_is_a_folder_of_conf():
    assert all(CONF.joinpath(group).is_dir() for group in CHOSEN_GROUPS)


def test_the_docs_list_every_option_of_every_group():
    groups = README[README.index("\n## Groups\n") : README.index("\nModels:\n")]
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \|", groups, re.M)
    for group, cell in rows:
        listed = set(re.findall(r"`(\w+)`", cell.split(";")[0].split("(")[0]))
        assert listed == yaml_options(group), f"docs/configuration.md's {group} row and conf/{group}/ disagree"
    assert {g for g, _ in rows} == {p.name for p in CONF.iterdir() if p.is_dir() and yaml_options(p.name)}


def test_no_global_option_before_train_yamls_own_values_sets_one_of_them():
    # train.yaml's _self_ comes after these groups: a top-level key set by their options would be a dead copy
    defaults = yaml.safe_load(CONF.joinpath("train.yaml").read_text())["defaults"]
    names = [next(iter(d)) if isinstance(d, dict) else d for d in defaults]
    own = set(yaml_file("train"))
    for group in names[: names.index("_self_")]:
        for option in yaml_options(group) if CONF.joinpath(group).is_dir() else ():
            text = CONF.joinpath(group, f"{option}.yaml").read_text()
            if text.startswith("# @package _global_"):
                dead = own & set(yaml.safe_load(text))
                assert not dead, f"conf/{group}/{option}.yaml sets {dead}, which train.yaml's own values override"


def test_what_old_runs_resume_with_names_keys_of_the_schema():
    # before dataset.augment existed, runs trained with these values: every augment key needs one
    assert set(FILLED_AS_BEFORE["dataset.augment"]) == {f.name for f in dataclasses.fields(AugmentConfig)}
    fillable = schema_keys(COMMAND_SCHEMAS["train"]) | {
        f"{group}.{key}" for group, options in GROUP_SCHEMAS.items() for s in options.values() for key in schema_keys(s)
    }
    for key in [*FILLED_AS_BEFORE, *NOT_FILLED_ON_RESUME]:
        assert any(k == key or k.startswith(f"{key}.") for k in fillable), key


def test_the_export_formats_the_checks_allow_are_those_export_writes():
    from mnist_cli.inference import export  # imports torch: only here

    assert OUTPUT_FORMATS["export"] == tuple(export.FILENAMES) == tuple(export.SUFFIXES) == tuple(export.EXPORTERS)


def test_the_default_train_config_is_what_the_readme_says():
    section = README[README.index("\n## Groups\n") : README.index("\n## Data\n")]
    groups, models = section.split("\nModels:\n")
    models, top_level = models.split("\nTop-level keys:\n")
    cfg = compose("train")
    checked = 0
    for group, default in re.findall(r"^\| `(\w+)` \| .*? \| `(\w+)` \|$", groups, re.M):
        assert cfg[group].name == default, group
        checked += 1
    for key, default in re.findall(r"^\| `([\w.]+)` \| `([^`]+)` \|", top_level, re.M):
        assert OmegaConf.select(cfg, key) == yaml.safe_load(default), key
        checked += 1
    for key in ("eval_batch_size", "data.split_seed", "early_stopping.min_delta"):  # given in the meaning column
        default = re.search(rf"`{re.escape(key)}=([^`]+)`", top_level).group(1)
        assert OmegaConf.select(cfg, key) == yaml.safe_load(default), key
        checked += 1
    for model, text in re.findall(r"^- `(\w+)`: (.*?)(?=^- |\Z)", models, re.M | re.S):
        composed = compose("train", [f"model={model}"]).model
        for key, default in re.findall(r"`model\.(\w+)=([^`]+)`", text):
            assert OmegaConf.to_container(composed)[key] == yaml.safe_load(default), f"{model}: model.{key}"
            checked += 1
    fused = re.search(r"`optimizer\.fused=true` \(([\w, ]+)\)", section).group(1).split(", ")
    for optimizer in GROUP_SCHEMAS["optimizer"]:
        assert compose("train", [f"optimizer={optimizer}"]).optimizer.get("fused") is (
            True if optimizer in fused else None
        )
    assert checked >= 20, "the README's Config tables were not found"


def test_a_resumed_run_gets_the_values_of_keys_added_since_from_its_own_options():
    stored = OmegaConf.to_container(compose("train", ["model=mlp", "optimizer=sgd", "dataset=fashion_mnist"]))
    del stored["precision"], stored["optimizer"]["fused"], stored["model"]["dropout"]  # as an older mnist-cli wrote it
    del stored["dataset"]["augment"], stored["dataset"]["test_time_flip"], stored["ema_decay"]
    filled = OmegaConf.merge(defaults_for(stored), stored)
    assert filled.precision == "fp32" and filled.model.dropout == 0.2  # mlp's dropout, not the default cnn's 0.25
    assert filled.dataset.augment.shift == 2  # the shifts it trained with, not FashionMNIST's default today
    assert filled.dataset.augment.flip is False and filled.dataset.test_time_flip is False and filled.ema_decay is None
    cnn = OmegaConf.to_container(compose("train", ["model=cnn"]))
    del cnn["model"]["convs_per_block"]
    assert OmegaConf.merge(defaults_for(cnn), cnn).model.convs_per_block == 1  # the cnn it was
    stored["dataset"]["augment"] = {"shift": 1, "flip": True, "rotate": 0.0, "scale": 0.0, "erase": 0.0}
    assert OmegaConf.merge(defaults_for(stored), stored).dataset.augment.shift == 1  # a run that has the key keeps it
    assert "fused" not in filled.optimizer  # it trained with torch's default implementation, and goes on so
    assert filled.model.hidden == stored["model"]["hidden"] and not OmegaConf.missing_keys(filled)
    cut_short = OmegaConf.merge(defaults_for({"dataset": stored["dataset"]}), {"dataset": stored["dataset"]})
    assert {"model", "optimizer", "scheduler"} <= OmegaConf.missing_keys(cut_short)  # resume refuses it
    with initialize_config_module(config_module="mnist_cli.conf", version_base="1.3"):  # as inside `mnist train`
        assert defaults_for(stored).model.dropout == 0.2


def test_digits_train_rotated_and_zoomed_but_an_mnist_run_from_before_resumes_as_it_trained():
    augment = compose("train").dataset.augment
    assert (augment.rotate, augment.scale, augment.shift) == (15.0, 0.15, 2)  # the default since issue 28
    before = OmegaConf.to_container(compose("train"))
    before["dataset"]["augment"].update(rotate=0.0, scale=0.0)  # what a run of 2026-12-05 stored
    assert OmegaConf.merge(defaults_for(before), before).dataset.augment.rotate == 0.0
    del before["dataset"]["augment"]  # and one from before dataset.augment existed
    older = OmegaConf.merge(defaults_for(before), before).dataset.augment
    assert (older.shift, older.rotate, older.scale) == (2, 0.0, 0.0)


def test_a_wrong_type_or_an_unknown_key_is_named():
    with pytest.raises(Exception, match="epochs=abc") as wrong:
        compose("train", ["epochs=abc"])
    assert wrong.value.__cause__.full_key == "epochs"  # what `mnist train epochs=abc` prints
    with pytest.raises(UserError, match="did you mean epochs?"):
        refuse_unknown_keys(compose("train"), ["epochz"])


def test_help_does_not_import_torch():
    check = "import sys, mnist_cli.cli.main; mnist_cli.cli.main.main(['train', '--help']); assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "== Config groups" in result.stdout and "channels:" in result.stdout


def test_the_dataset_names_the_checks_take_are_those_the_readers_know():
    from mnist_cli.config import schema
    from mnist_cli.datasets import images, torchvision_sets

    assert set(schema.EMNIST_SPLITS) == set(torchvision_sets.EMNIST_SPLITS) == set(torchvision_sets.EMNIST_CLASSES)
    assert set(schema.PREPARATIONS) == set(images.RECIPES)
    for part in schema.QMNIST_TEST_PARTS:
        assert torchvision_sets._qmnist_layout(part).test_rows is not None
