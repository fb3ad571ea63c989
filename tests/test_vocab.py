"""Attribute vocabulary: loading, naming rule, duplicates, derivation from answers, data checks."""

import json

import pytest

from llamafactory_attok.errors import AttTokError
from llamafactory_attok.rows import add_attribute_tokens, keyword_token_ids
from llamafactory_attok.testing import build_tiny_tokenizer
from llamafactory_attok.vocab import (
    check_data_tokens,
    derive_vocab,
    iter_dataset_answers,
    keyword_after,
    load_vocab,
    vocab_from_mapping,
)


def write(tmp_path, text, name="vocab.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_keeps_order(tmp_path):
    vocab = load_vocab(write(tmp_path, '"<|fundus_sdr|>": severe DR\n"<|fundus_no_dr|>": "no DR"\n'))
    assert vocab.tokens == ("<|fundus_sdr|>", "<|fundus_no_dr|>") and vocab.keywords == ("severe DR", "no DR")
    assert vocab.modality("<|fundus_sdr|>") == "fundus"


def test_malformed_yaml_names_the_file(tmp_path):
    path = write(tmp_path, '"<|fundus_sdr|>": [unclosed\n')
    with pytest.raises(AttTokError, match=f"{path}: malformed vocabulary YAML"):
        load_vocab(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(AttTokError, match="must be a YAML mapping"):
        load_vocab(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("token", ["<|Fundus_sdr|>", "<|fundus__sdr|>", "<fundus_sdr>", "<|fundus-sdr|>", "<|_sdr|>",
                                   "<|fundus sdr|>", "<|fundus_sdr_|>"])
def test_naming_rule_names_file_and_line(tmp_path, token):
    path = write(tmp_path, f'"<|fundus_ok|>": fine\n"{token}": bad one\n')
    with pytest.raises(AttTokError, match=r"line 2: attribute token .* breaks the naming rule"):
        load_vocab(path)


def test_duplicated_token_names_the_file_and_both_lines(tmp_path):
    path = write(tmp_path, '"<|fundus_sdr|>": a\n"<|fundus_mdr|>": b\n"<|fundus_sdr|>": c\n')
    with pytest.raises(AttTokError) as caught:
        load_vocab(path)
    assert str(caught.value) == (f"{path}: line 3: duplicated attribute token '<|fundus_sdr|>' "
                                 "(first defined on line 1).")


def test_non_utf8_vocabulary_names_the_file_and_line(tmp_path):
    path = tmp_path / "vocab.yaml"
    path.write_bytes('"<|fundus_sdr|>": severe\n"<|fundus_cafe|>": caf\xe9\n'.encode("latin-1"))
    with pytest.raises(AttTokError) as caught:
        load_vocab(path)
    assert str(caught.value) == (f"{path}: line 2: not UTF-8 text (byte 0xe9: invalid continuation byte); "
                                 "save the file as UTF-8.")


def test_empty_keyword(tmp_path):
    with pytest.raises(AttTokError, match="line 1: attribute token <|fundus_sdr|> needs a non-empty keyword"):
        load_vocab(write(tmp_path, '"<|fundus_sdr|>": "  "\n'))


def test_keyword_that_tokenises_to_nothing_usable():
    tokenizer = build_tiny_tokenizer()
    vocab = vocab_from_mapping({"<|fundus_a|>": "first", "<|fundus_b|>": "<|fundus_a|>"}, "vocab.yaml")
    ids, _ = add_attribute_tokens(tokenizer, vocab)
    with pytest.raises(AttTokError, match=r"keyword '<\|fundus_a\|>' of <\|fundus_b\|> tokenises to nothing"):
        keyword_token_ids(tokenizer, vocab, ids)


def test_keyword_after_rule():
    text = "<|xray_effusion|> pleural effusion, <|xray_cardiomegaly|> cardiomegaly."
    assert keyword_after(text, "<|xray_effusion|>") == "pleural effusion"
    assert keyword_after(text, "<|xray_cardiomegaly|>") == "cardiomegaly"


def test_derive_vocab_multi_label_majority_and_known_specials():
    answers = [
        ("s0", "<|xray_effusion|> pleural effusion <|xray_cardiomegaly|> enlarged heart<|im_end|>"),
        ("s1", "<|xray_effusion|> pleural effusion"),
        ("s2", "<|xray_effusion|> effusion"),
    ]
    vocab = derive_vocab(answers, known_special={"<|im_end|>"})
    assert vocab.as_dict() == {"<|xray_effusion|>": "pleural effusion", "<|xray_cardiomegaly|>": "enlarged heart"}


def test_derive_vocab_bad_name_names_sample():
    with pytest.raises(AttTokError, match="s7: attribute token '<|XRAY_x|>' breaks"):
        derive_vocab([("s7", "<|XRAY_x|> x")], known_special=set())


def test_data_token_missing_from_vocab_names_sample():
    vocab = vocab_from_mapping({"<|fundus_a|>": "a"}, "v")
    with pytest.raises(AttTokError, match=r"data.json: sample 1: attribute token <\|fundus_b\|> appears in the data"):
        check_data_tokens([("data.json: sample 0", "<|fundus_a|> a"), ("data.json: sample 1", "<|fundus_b|> b")],
                          vocab, known_special=set())


def test_iter_dataset_answers_sharegpt(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<|fundus_a|> a"}]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {
        "file_name": "d.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    assert list(iter_dataset_answers(str(tmp_path), ["d"])) == [(f"{tmp_path / 'd.json'}: sample 0", "<|fundus_a|> a")]
    with pytest.raises(AttTokError, match="dataset 'missing' is not listed"):
        list(iter_dataset_answers(str(tmp_path), ["missing"]))
