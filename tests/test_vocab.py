"""Attribute vocabulary: loading, naming rule, duplicates, derivation from answers, data checks."""

import json
import logging

import pytest

from llamafactory_attok.errors import AttTokError
from llamafactory_attok.rows import add_attribute_tokens, keyword_token_ids
from llamafactory_attok.tiny import build_tiny_tokenizer
from llamafactory_attok.vocab import (
    AttributeVocab,
    check_data_tokens,
    derive_vocab,
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
    mapping = {"<|fundus_a|>": "first", "<|fundus_b|>": "<|fundus_a|>"}
    with pytest.raises(AttTokError, match=r"vocab.yaml: the keyword '<\|fundus_a\|>' of <\|fundus_b\|> contains"):
        vocab_from_mapping(mapping, "vocab.yaml")  # refused when read; the guard below stays for built vocabularies
    vocab = AttributeVocab(tuple(mapping), tuple(mapping.values()))
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


def _data_args(folder):
    from llamafactory.hparams import DataArguments

    return DataArguments(dataset_dir=str(folder), preprocessing_num_workers=1)


def test_answers_are_read_by_lf_loader_sharegpt(tmp_path):
    from llamafactory_attok.lf_data import DatasetUnreadable, iter_answers

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<|fundus_a|> a"}]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {
        "file_name": "d.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    data_args = _data_args(tmp_path)
    assert list(iter_answers(["d"], data_args)) == [(f"{tmp_path / 'd.json'}: sample 0", "<|fundus_a|> a")]
    with pytest.raises(DatasetUnreadable, match="Undefined dataset missing"):
        list(iter_answers(["missing"], data_args))


def test_answers_of_parquet_and_alpaca_datasets_with_column_mappings(tmp_path):
    """Forms the old hand-written scan could not read: a parquet folder, an alpaca CSV with renamed columns."""
    import pandas as pd

    from llamafactory_attok.lf_data import iter_answers

    (tmp_path / "pq").mkdir()
    conversations = [[{"from": "human", "value": "q"}, {"from": "gpt", "value": f"<|xray_{c}|> {c}"}]
                     for c in ("normal", "pneumonia")]
    pd.DataFrame({"conv": conversations}).to_parquet(tmp_path / "pq" / "part-0.parquet")
    pd.DataFrame({"instr": ["q1", "q2"], "out": ["<|xray_normal|> normal", "<|xray_pneumonia|> pneumonia"]}).to_csv(
        tmp_path / "alpaca.csv", index=False)
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "pq": {"file_name": "pq", "formatting": "sharegpt", "columns": {"messages": "conv"}},
        "al": {"file_name": "alpaca.csv", "columns": {"prompt": "instr", "response": "out"}}}))
    answers = list(iter_answers(["pq", "al"], _data_args(tmp_path)))
    assert [text for _, text in answers] == ["<|xray_normal|> normal", "<|xray_pneumonia|> pneumonia"] * 2
    assert answers[0][0] == f"{tmp_path / 'pq'}: sample 0" and answers[3][0] == f"{tmp_path / 'alpaca.csv'}: sample 1"


def test_unreadable_dataset_is_a_warning_with_a_vocabulary_and_an_error_without(tiny_models, sample_data, tmp_path):
    """A hub dataset cannot be read offline: with attok_vocab the scan is skipped with a warning, else an error."""
    from conftest import base_args
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    info = json.loads((sample_data / "dataset_info.json").read_text())
    info["hub_only"] = {"hf_hub_url": "nobody/not-a-dataset", "formatting": "sharegpt"}
    data = tmp_path / "data"  # beside the output folders: an output_dir inside the data folder is refused
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps(info))
    for name in ("retina_attok_train.json", "retina_images"):
        (data / name).symlink_to(sample_data / name)
    common = {"dataset": "hub_only", "dataset_dir": str(data)}
    with_vocab = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "o1", attok=True,
                           attok_vocab=str(sample_data / "retina_vocab.yaml"), **common)
    model_args, *_ = get_train_args(with_vocab)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("llamafactory_attok").addHandler(handler)
    try:
        load_tokenizer(model_args)
    finally:
        logging.getLogger("llamafactory_attok").removeHandler(handler)
    text = " ".join(r.getMessage() for r in records)
    assert "LLaMA-Factory's loader failed" in text and "check of attribute tokens in the data is skipped" in text
    without = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "o2", attok=True, **common)
    model_args, *_ = get_train_args(without)
    with pytest.raises(AttTokError, match="dataset 'hub_only' .*LLaMA-Factory's loader failed"):
        load_tokenizer(model_args)
