"""The words after `mnist <command>`, parsed once with Hydra's own override parser into a `CommandLine`
that every step before Hydra reads; and the mistakes refused before Hydra starts.

Imports hydra's override parser only (no torch): `mnist train --help` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType

from mnist_cli.errors import UserError

# Hydra's options that take the next word as their value (--info's is optional: one of its topics). @hydra.main
# parses its options itself; this copy only keeps their values out of the overrides we read before it runs.
_OPTIONS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
_OPTIONS_WITH_VALUE |= {"--config-dir", "-cd"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
# Hydra's options that show something (a config, Hydra's facts, a version) instead of running the task
_SHOW_ONLY = {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--version"}


@dataclass(frozen=True)
class CommandLine:
    """One `mnist <command> ...` line, parsed once."""

    command: str
    args: Tuple[str, ...]  # the words after the command as Hydra gets them (non-ASCII values quoted)
    words: Tuple[str, ...]  # the overrides as written: Hydra's options and their values left out
    overrides: Optional[Tuple[Override, ...]]  # `words` parsed by Hydra; None when it refuses them (it says why)
    added: Tuple[str, ...] = ()  # our own overrides: the run folder claimed, a quiet rank's scratch folder

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args

    @property
    def asks_help(self) -> bool:
        return "--help" in self.args or "-h" in self.args

    @property
    def runs_task(self) -> bool:
        """False when Hydra only shows something (--cfg, --info, --help, ...): nothing is written then."""
        return not _SHOW_ONLY & set(self.args)

    @property
    def keys(self) -> set:
        """The keys and groups the overrides name (swept and deleted ones too)."""
        return {o.key_or_group for o in self.overrides or ()}

    @property
    def given(self) -> Dict[str, object]:
        """The plain KEY=VALUE overrides as {key: value}, quotes removed."""
        plain = [o for o in self.overrides or () if not o.is_sweep_override() and not o.is_delete()]
        return {o.key_or_group: o.value() for o in plain}

    @property
    def composable(self) -> List[str]:
        """The overrides one composition takes: a sweep's (-m a,b) left out. As written when Hydra cannot
        parse them (`model` with no =value), so that composing them says why."""
        if self.overrides is None:
            return [*self.words, *self.added]
        return [*(o.input_line for o in self.overrides if not o.is_sweep_override()), *self.added]

    @property
    def hydra_argv(self) -> List[str]:
        """sys.argv as @hydra.main reads it: the app's name, then the words with our own overrides right after
        the user's last one (argparse takes the overrides as one run of words: after a trailing -m it refuses them)."""
        at = max((i + 1 for i, word in enumerate(self.args) if word in self.words), default=len(self.args))
        return [f"mnist {self.command}", *self.args[:at], *self.added, *self.args[at:]]

    def adding(self, *overrides: str) -> CommandLine:
        """Returns this command line with overrides of our own after the user's (Hydra takes the last)."""
        return replace(self, added=(*self.added, *overrides))


def parse_command_line(command: str, args: Sequence[str]) -> CommandLine:
    """Returns the words after `mnist <command>` parsed as Hydra will parse them."""
    args = tuple(non_ascii_quoted(args))
    after = ("", *args)
    words = tuple(
        word
        for before, word in zip(after, args)
        if not word.startswith("-")
        and before not in _OPTIONS_WITH_VALUE
        and not (before in ("--info", "-i") and word in _INFO_TOPICS)
    )
    try:
        overrides = tuple(OverridesParser.create().parse_overrides(list(words)))
    except Exception:  # Hydra refuses them again when it runs, and we answer with one sentence then
        overrides = None
    return CommandLine(command, args, words, overrides)


# The parts of a value that Hydra's grammar reads as structure; what lies between them is plain text
_STRUCTURE = re.compile(r"""([\[\]{}(),='"])""")


def non_ascii_quoted(args: Sequence[str]) -> List[str]:
    """The arguments with each plain-text part of a value that holds a non-ASCII letter put in quotes:
    Hydra's grammar takes only ASCII letters unquoted, and `inputs=[scans/zïffer.png]` means no more than
    `inputs=['scans/zïffer.png']`. A word with quotes, escapes or `${` of its own, all ASCII, or one that
    Hydra still cannot read once quoted, stays as written (Hydra's refusal then names what the user typed)."""
    quoted = []
    for word in args:
        key, equals, value = word.partition("=")
        if word.startswith("-") or not equals or value.isascii() or any(c in value for c in "'\"\\") or "${" in value:
            quoted.append(word)
            continue
        parts = _STRUCTURE.split(value)
        plain = (f"'{p.strip()}'" if not p.isascii() and not _STRUCTURE.fullmatch(p) else p for p in parts)
        candidate = key + equals + "".join(plain)
        try:
            OverridesParser.create().parse_overrides([candidate])
        except Exception:
            candidate = word
        quoted.append(candidate)
    return quoted


def refuse_before_hydra(line: CommandLine) -> None:
    """Raises UserError for mistakes Hydra would answer with a traceback, or by overwriting a run: one sentence."""
    if "--shell-completion" in line.args or "-sc" in line.args:
        raise UserError(
            "shell completion is not supported; `mnist --help` lists the commands, `mnist <command> --help` every key."
        )
    overrides = line.overrides or ()
    searched = "hparams_search" in line.keys or "hydra/sweeper" in line.keys
    for o in overrides:
        if o.value_type in (ValueType.INTERVAL_SWEEP, ValueType.RANGE_SWEEP) and not searched:
            if o.value_type == ValueType.INTERVAL_SWEEP or not line.multirun:
                raise UserError(
                    f"{o.key_or_group}=interval(...) needs a search sweeper: add hparams_search=optuna, "
                    "or list the values to try (-m key=a,b,c)."
                )
    # -m experiment=mnist_best model=mlp,cnn: each swept option with the rest, before the sweep's folder
    if line.multirun:
        from mnist_cli.config.hydra_refusals import composition_problem

        for choice in _group_choices(overrides):
            problem = composition_problem("train", [*line.composable, choice])
            if problem:
                raise UserError(problem)


def _group_choices(overrides: Sequence[Override]) -> List[str]:
    """A sweep's options of config groups, one override each: `-m model=mlp,cnn` (or choice(mlp,cnn)) -> model=mlp, model=cnn."""
    from mnist_cli.config.schema import CHOSEN_GROUPS

    listed = (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP)
    return [
        f"{o.key_or_group}={value}"
        for o in overrides
        if o.value_type in listed and o.key_or_group in CHOSEN_GROUPS
        for value in o.sweep_string_iterator()
    ]
