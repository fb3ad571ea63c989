"""The `attok` command explains itself: every option of every subcommand has help text, ending with its default."""

import argparse

from llamafactory_attok.cli import _all_parsers, build_parser


def test_every_option_has_help_with_its_default():
    missing, no_default = [], []
    for parser in _all_parsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = f"{parser.prog} {action.option_strings or action.dest}"
            if not action.help:
                missing.append(name)
            elif action.option_strings and not action.required and "(default:" not in parser._get_formatter(
            )._get_help_string(action):
                no_default.append(name)
        assert "(default:" in text or parser.prog in ("attok", "attok data", "attok eval")
    assert not missing, missing
    assert not no_default, no_default
