"""The command line explains itself: the top-level help says what stagewise does and lists every
command with one line, every argument of every command (at any depth) has help text, and every
long option is accepted with underscores as well as hyphens.

The tree is walked generically, so commands added later are held to the same bar.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagewise.cli import build_parser
from stagewise.cli.deferred import DeferredParser


def walk(parser: argparse.ArgumentParser, path: str = "stagewise") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (command path, parser) of the tree, the deferred flags added."""
    if isinstance(parser, DeferredParser):
        parser.populate()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def _commands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_every_argument_of_every_command_has_help() -> None:
    missing = []
    for path, parser in walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                # Each subcommand's one line in its parent's listing.
                listed = {a.dest for a in action._choices_actions if a.help}
                missing += [f"{path} {name}" for name in action.choices if name not in listed]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "arguments without help text:\n" + "\n".join(missing)


def test_top_level_help_says_what_stagewise_does_and_lists_the_commands(capsys) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "transfer learning and stage-by-stage training of image classifiers" in text
    assert "No training logic" not in text  # the developer docstring stays in the code
    for name in _commands(parser).choices:
        assert f"\n    {name} " in text  # one line per command
    assert "--data_dir" in text  # the underscore spellings are stated


def test_every_long_option_is_accepted_with_underscores() -> None:
    """For every command: each hyphenated long option, written with underscores, reaches the
    same destination (a value-taking flag gets a placeholder value)."""
    for path, parser in walk(build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if not option.startswith("--") or "-" not in option[2:]:
                    continue
                written = "--" + option[2:].replace("-", "_")
                assert parser.hyphenated([written, "x_y"]) == [option, "x_y"], f"{path} {written}"
                assert parser.hyphenated([f"{written}=a_b"]) == [f"{option}=a_b"], f"{path} {written}"


def test_underscores_leave_values_and_unknown_options_alone() -> None:
    train = _commands(build_parser()).choices["train"]
    argv = ["--set", "head_layers=[8]", "--out", "my_runs", "--not_an_option", "--", "--data_dir"]
    assert train.hyphenated(argv) == argv
    # Abbreviations resolve as they do with hyphens.
    assert train.hyphenated(["--freeze_back"]) == ["--freeze-back"]
    args = train.parse_args(["--data_dir", "d", "--output_dir", "o", "--learning_rate", "0.5",
                             "--freeze_backbone", "--batch_size", "4", "--set", "a_b=c_d"])
    assert (args.data, args.out, args.lr, args.strategy, args.batch_size) == ("d", "o", 0.5, "probe", 4)
    assert args.set == ["a_b=c_d"]


def test_configuration_reference_is_generated_from_the_schema() -> None:
    """docs/configuration.md is `stagewise keys --markdown`: a key added or changed without
    regenerating it fails here (the fix: run that command)."""
    import contextlib
    import io

    from stagewise.cli import main

    page = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["keys", "--markdown"]) == 0
    assert page.read_text() == out.getvalue(), \
        "docs/configuration.md is stale: stagewise keys --markdown > docs/configuration.md"
