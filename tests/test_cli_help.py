"""The `attok` command explains itself: every option of every subcommand has help text that gives its default once,
and an option without a default says what leaving it out means."""

import argparse
import re

from llamafactory_attok.cli import DESCRIPTION, _all_parsers, build_parser

ABSENCE = re.compile(r"\b(default|none|without|absent|empty|not given|omitted|unless|only with|all)\b", re.I)


def test_every_option_has_help_with_its_default():
    missing, no_default, twice, unexplained = [], [], [], []
    for parser in _all_parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = f"{parser.prog} {action.option_strings or action.dest}"
            text = formatter._get_help_string(action)
            if not action.help:
                missing.append(name)
                continue
            if text.count("(default:") > 1 or "(default: None)" in text:
                twice.append(name)
            if not action.option_strings or action.required:
                continue
            if action.default is None:
                if not ABSENCE.search(text):
                    unexplained.append(name)
            elif "default" not in text:
                no_default.append(name)
    assert not missing, missing
    assert not no_default, no_default
    assert not twice, twice
    assert not unexplained, unexplained


def test_top_help_is_plain_text():
    text = build_parser().format_help()
    assert DESCRIPTION[:40] in text.replace("\n", " ").replace("  ", " ") or "helpers around LLaMA-Factory" in text
    assert "``" not in text
