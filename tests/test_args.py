"""Strict parsing of attok_* keys from YAML dicts, CLI lists and WebUI dicts."""

import pytest

from llamafactory_attok.args import (
    VALID_KEYS,
    AttTokArguments,
    parse_attok_dict,
    split_attok_cli,
    split_attok_dict,
)
from llamafactory_attok.errors import AttTokError


def test_defaults_are_the_papers():
    args = AttTokArguments()
    assert (args.attok_acc_gamma, args.attok_ema, args.attok_tau, args.attok_acm_weight) == (0.1, 0.99, 1.0, 1.0)
    assert args.attok_acm_schedule == "linear" and args.attok_acc and args.attok_acm and not args.attok


def test_typo_names_key_and_lists_valid_ones():
    with pytest.raises(AttTokError) as err:
        parse_attok_dict({"attok": True, "attok_gama": 0.2})
    message = str(err.value)
    assert "attok_gama" in message and "attok_acc_gamma" in message
    assert all(key in message for key in VALID_KEYS)


def test_cli_forms_are_split_and_coerced():
    ours, rest = split_attok_cli(
        ["--model_name_or_path", "m", "--attok", "--attok_acc_gamma=0.3", "--attok_acm", "false", "--attok_tau", "2"]
    )
    assert rest == ["--model_name_or_path", "m"]
    args = parse_attok_dict(ours)
    assert args.attok and args.attok_acc_gamma == 0.3 and not args.attok_acm and args.attok_tau == 2.0


def test_webui_dict_with_strings():
    ours, rest = split_attok_dict({"stage": "sft", "attok": "true", "attok_ema": "0.9"})
    assert rest == {"stage": "sft"}
    assert parse_attok_dict(ours).attok_ema == 0.9


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("attok_acc_gamma", -0.1, "attok_acc_gamma must be >= 0"),
        ("attok_ema", 1.0, r"attok_ema must be in \[0, 1\)"),
        ("attok_ema", -0.5, r"attok_ema must be in \[0, 1\)"),
        ("attok_tau", 0.0, "attok_tau must be > 0"),
        ("attok_tau", 1e-30, "attok_tau must be > 0, at least 0.01"),
        ("attok_acm_schedule", "step", "attok_acm_schedule must be one of linear, cosine, constant"),
        ("attok_acc", "maybe", "attok_acc must be true or false"),
        ("attok_tau", "warm", "attok_tau must be a number"),
    ],
)
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(AttTokError, match=match):
        parse_attok_dict({"attok": True, key: value})
