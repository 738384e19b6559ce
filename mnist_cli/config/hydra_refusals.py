"""The one adapter for Hydra's and OmegaConf's errors: each refusal turned into one sentence saying what to do.

Hydra's messages run over several lines and name some facts (the preset, the key) only in their text.
Every place that reads an error's text or attributes is here, and tests/config/test_hydra_refusals.py
composes Hydra's own errors so that an upgrade that changes them fails there, naming Hydra's version.
Imports only hydra/omegaconf, never torch.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence, Tuple

from mnist_cli.config.compose import compose
from mnist_cli.config.schema import CHOSEN_GROUPS, COMMAND_SCHEMAS, known_keys, schema_keys


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, ending in one full stop."""
    return str(error).strip().splitlines()[0].rstrip(".") + "."


def composition_problem(command: str, overrides: Sequence[str]) -> Optional[str]:
    """Return one sentence saying why conf/<command>.yaml does not compose with `overrides` (Hydra's own
    message runs over several lines), or None when it composes."""
    from hydra.errors import MissingConfigException, OverrideParseException

    try:
        compose(command, overrides, with_hydra=True)
        return None
    except MissingConfigException as error:  # model=resnet
        if not error.options:
            return _first_line(error)
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option} is not an option of {group}; choose one of {', '.join(error.options)}."
    except OverrideParseException as error:  # model.hidden=[64
        return (
            f"{error.override} cannot be read as KEY=VALUE ({_first_line(error).rstrip('.')}); a value with "
            "brackets, braces, commas, quotes or = in it needs quotes: 'inputs=[\"scans/x (1).png\"]' or 'run=\"a,b\"'."
        )
    except Exception as error:  # Hydra's ConfigCompositionException, caused by OmegaConf's error on one key
        return (
            _unchosen_logger_key(overrides)
            or _preset_key_missing(error, overrides)
            or _key_problem(command, overrides, error)
        )


def _key_problem(command: str, overrides: Sequence[str], error: Exception) -> str:
    """The sentence for a composition error OmegaConf raised on one key: unknown (epochz=3), or a value it
    cannot take (epochs=abc); Hydra's first line for anything else."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause, key = error.__cause__, getattr(error.__cause__, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:  # epochz=3
        choices = [o for o in overrides if o.split("=", 1)[0] in CHOSEN_GROUPS]  # model=mlp, ...
        try:
            composed = compose(command, choices)
            known = known_keys(composed) if command == "train" else schema_keys(COMMAND_SCHEMAS[command])
        except Exception:
            known = []
        return not_a_key(command, key, known)
    if isinstance(cause, OmegaConfBaseException) and key:  # epochs=abc
        given = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)
        return f"{given}: {_first_line(cause)}"
    return _first_line(error)


def _preset_and_key(error: Exception) -> Optional[Tuple[str, str]]:
    """(preset, key) when `error` is Hydra's refusal of a key an experiment preset sets that the chosen
    group option lacks; Hydra names both only in its message's text ("In 'experiment/<preset>': ...
    full_key: <key>"). None for any other error."""
    preset = re.match(r"In 'experiment/(\w+)'", str(error))
    key = re.search(r"full_key: (\S+)", str(error))
    return (preset[1], key[1]) if preset and key else None


def _preset_key_missing(error: Exception, overrides: Sequence[str]) -> Optional[str]:
    """experiment=mnist_best model=mlp: the preset sets a key (model.channels) the chosen option lacks;
    the sentence saying so, None for other errors."""
    found = _preset_and_key(error)
    if found is None:
        return None
    preset, key = found
    group = key.split(".")[0]
    chosen = next((o for o in overrides if o.split("=", 1)[0] == group), f"the {group} chosen")
    return (
        f"experiment={preset} sets {key}, which {chosen} does not have; "
        f"leave {group}= out to train the preset as it is, or set the keys yourself without the preset."
    )


def _unchosen_logger_key(overrides: Sequence[str]) -> Optional[str]:
    """`logger.mlflow.tracking_uri=...` without logger=mlflow: the sentence saying so, else None.
    Read from the overrides, not Hydra's error (an assertion with no key in it)."""
    given = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in overrides if "=" in o}
    chosen = given.get("logger", "csv").strip("[]").replace(" ", "").split(",")
    for key in given:
        parts = key.split(".")
        if parts[0] == "logger" and len(parts) > 2 and parts[1] not in chosen:
            return (
                f"{key} sets the {parts[1]} logger, which is not chosen; "
                f"add logger={parts[1]} (several: 'logger=[tensorboard,mlflow]')."
            )
    return None


def not_a_key(command: str, key: str, known: Iterable[str]) -> str:
    """Return `key is not a key of mnist <command>`, with the closest known key when there is one: the same
    sentence for Hydra's refusal of epochz=3 and for the +epochz=3 that Hydra accepts (checks.py)."""
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; `mnist {command} --help` lists every key."
    return f"{key} is not a key of mnist {command}{hint}"


def invalid_value(error: Exception) -> str:
    """Return the sentence for OmegaConf's error on reading a key the checks need (missing or mistyped):
    the key's name and the first line of OmegaConf's message."""
    return f"{getattr(error, 'full_key', None) or 'the config'}: {str(error).splitlines()[0]}"
