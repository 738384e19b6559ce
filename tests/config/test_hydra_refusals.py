"""config/hydra_refusals.py reads what Hydra and OmegaConf say when they refuse a command line: the text
of one message, and attributes of their errors. Each test makes the library refuse for real and checks
that what the adapter reads is still there, so an upgrade that changes it fails here, naming the version,
instead of turning a one-sentence refusal into a traceback."""

from __future__ import annotations

import hydra
import omegaconf
import pytest
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mnist_cli.config.checks import validate
from mnist_cli.config.compose import compose
from mnist_cli.config.hydra_refusals import _preset_and_key, composition_problem, invalid_value


def changed(library: str, what: str, error: BaseException) -> str:
    """The failure message: which library, which version, what changed, where to mend it."""
    version = hydra.__version__ if library == "Hydra" else omegaconf.__version__
    return (
        f"{library} {version} changed {what}; update config/hydra_refusals.py. "
        f"It raised {type(error).__name__}: {str(error)!r}, cause {error.__cause__!r}"
    )


def refusal(overrides) -> BaseException:
    """The error Hydra raises composing conf/train.yaml with `overrides` (with its hydra node, as the CLI does)."""
    with pytest.raises(Exception) as caught:
        compose("train", overrides, with_hydra=True)
    return caught.value


def test_a_preset_key_the_chosen_option_lacks_is_read_from_hydras_message_text():
    error = refusal(["experiment=mnist_best", "model=mlp"])
    what = "the text of ConfigCompositionException (\"In 'experiment/<preset>': ... full_key: <key>\")"
    assert _preset_and_key(error) == ("mnist_best", "model.channels"), changed("Hydra", what, error)
    assert composition_problem("train", ["experiment=mnist_best", "model=mlp"]).startswith(
        "experiment=mnist_best sets model.channels, which model=mlp does not have;"
    )


def test_an_unknown_option_names_its_group_and_the_choices():
    error = refusal(["model=resnet"])
    what = "MissingConfigException's options and missing_cfg_file"
    assert isinstance(error, MissingConfigException), changed("Hydra", what, error)
    assert getattr(error, "options", None) == ["cnn", "lenet", "mlp"], changed("Hydra", what, error)
    assert getattr(error, "missing_cfg_file", None) == "model/resnet", changed("Hydra", what, error)


def test_an_unreadable_override_is_named_as_given():
    error = refusal(["model.hidden=[64"])
    what = "OverrideParseException's override attribute"
    assert isinstance(error, OverrideParseException), changed("Hydra", what, error)
    assert getattr(error, "override", None) == "model.hidden=[64", changed("Hydra", what, error)


def test_an_unknown_key_is_omegaconfs_error_with_its_full_key_as_the_cause():
    error = refusal(["epochz=3"])
    what = "the cause of a composition error on an unknown key (ConfigAttributeError/ConfigKeyError with full_key)"
    assert isinstance(error.__cause__, (ConfigAttributeError, ConfigKeyError)), changed("Hydra", what, error)
    assert getattr(error.__cause__, "full_key", None) == "epochz", changed("OmegaConf", what, error)


def test_a_value_of_the_wrong_type_is_omegaconfs_error_with_its_full_key_as_the_cause():
    error = refusal(["epochs=abc"])
    what = "the cause of a composition error on a mistyped value (an OmegaConf error with full_key)"
    assert isinstance(error.__cause__, OmegaConfBaseException), changed("Hydra", what, error)
    assert getattr(error.__cause__, "full_key", None) == "epochs", changed("OmegaConf", what, error)
    assert composition_problem("train", ["epochs=abc"]).startswith("epochs=abc: "), changed("Hydra", what, error)


def test_a_key_the_checks_cannot_read_is_named():
    cfg = compose("train")
    cfg.epochs = "???"  # as a stored config cut short would give it
    with pytest.raises(OmegaConfBaseException) as caught:
        validate(cfg)
    error = caught.value
    assert getattr(error, "full_key", None) == "epochs", changed("OmegaConf", "its errors' full_key", error)
    assert invalid_value(error) == "epochs: Missing mandatory value: epochs"
