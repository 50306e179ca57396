"""The command-line tools' --help: defaults shown, every flag explained, no RST markup, underscore flags."""

import argparse

import pytest

from stablemtl.cli import convert_official, demo, evaluate, make_data

PARSERS = {
    "stablemtl-eval": evaluate.build_parser,
    "stablemtl-make-data": make_data.build_parser,
    "python -m stablemtl.cli.demo": demo.build_parser,
    "stablemtl-convert": convert_official.build_parser,
}


@pytest.mark.parametrize("name", list(PARSERS))
def test_help_explains_every_flag_with_its_default(name):
    parser = PARSERS[name]()
    text = parser.format_help()
    assert "``" not in text and ":class:" not in text and "::" not in text
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{name} {action.option_strings} has no help text"
        for option in action.option_strings:
            assert "-" not in option.lstrip("-"), f"{name}: {option} is not in the --flag_name style"
        meaningful = action.default not in (None, False, []) and action.default != argparse.SUPPRESS
        if meaningful:
            assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)


def test_old_dashed_spelling_still_parses_but_is_not_advertised():
    parser = make_data.build_parser()
    args = parser.parse_args(["--profile", "street", "--n", "2", "--out", "x", "--shard-size", "7"])
    assert args.shard_size == 7
    assert (
        parser.parse_args(["--profile", "street", "--n", "2", "--out", "x", "--shard_size", "5"]).shard_size
        == 5
    )
    assert "--shard-size" not in parser.format_help() and "--shard_size" in parser.format_help()
