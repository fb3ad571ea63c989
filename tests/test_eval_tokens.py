"""`attok eval classify` of AttTok generations: scored by the first attribute token and by the text, with their
agreement. Hand-written generations; no model."""

import json

import pytest

from llamafactory_attok.errors import AttTokError
from llamafactory_attok.eval.classification import (
    NO_SPECIAL_AT_ALL,
    TOKEN_UNAVAILABLE,
    score_generated,
    token_map,
)
from llamafactory_attok.eval.normalize import class_tokens, parse_token
from llamafactory_attok.vocab import AttributeVocab

NO, MILD, SEVERE = "<|fundus_no_dr|>", "<|fundus_mild_dr|>", "<|fundus_severe_dr|>"
TOKEN = {"no DR": NO, "mild DR": MILD, "severe DR": SEVERE}
VOCAB = AttributeVocab((NO, MILD, SEVERE), ("no diabetic retinopathy", "mild diabetic retinopathy", "severe DR"))


def _dataset(tmp_path, labels, vanilla=False, prefix=""):
    rows = [{"messages": [{"role": "user", "content": "<image>Grade?"},
                          {"role": "assistant", "content": lab if vanilla else f"{prefix}{TOKEN[lab]} {lab}"}],
             "images": ["x.png"], "label": lab} for lab in labels]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(rows))
    return path, rows


def _predictions(tmp_path, rows, predicts):
    path = tmp_path / "generated_predictions.jsonl"
    # LF with skip_special_tokens false: pad / end tokens around the reference and the generation
    path.write_text("".join(json.dumps({"prompt": "p", "predict": p, "label": "<|endoftext|>"
                                        + r["messages"][1]["content"]}) + "\n" for p, r in zip(predicts, rows,
                                                                                                 strict=True)))
    return path


# sample: truth, generation -- and what each reading makes of it
CASES = [
    ("no DR", f"{NO} xq zzk<|im_end|>", "token only (right token, junk text)"),
    ("mild DR", "The grade is mild DR.", "text only"),
    ("mild DR", f"{MILD} mild DR<|im_end|>", "both agree"),
    ("no DR", f"{NO} mild DR", "both disagree: token right, text wrong"),
    ("mild DR", f"<|im_start|>{MILD} {NO} {MILD} mild diabetic retinopathy", "several tokens: the first counts"),
    ("no DR", "banana", "neither"),
]


def test_token_and_text_readings_with_agreement(tmp_path, capsys):
    dataset, rows = _dataset(tmp_path, [c[0] for c in CASES] + ["severe DR"])
    predictions = _predictions(tmp_path, rows, [c[1] for c in CASES] + [f"{SEVERE} severe DR"])
    scores = score_generated(predictions, dataset)
    assert scores.classes == ["no DR", "mild DR", "severe DR"]
    # the text reading is unchanged: right on samples 1, 2, 6; 0, 4 (keyword synonym needs --vocab), 5 unparseable
    assert scores.unparseable == 3 and scores.accuracy == pytest.approx(3 / 7)
    assert scores.token_scoring == "available"
    by_token = scores.by_token
    assert by_token["accuracy"] == pytest.approx(5 / 7)  # wrong: text only (1), neither (5)
    assert by_token["no_token"] == 2 and by_token["multi_token"] == 1 and by_token["multi_token_ids"] == [4]
    assert by_token["confusion"] == [[2, 0, 0, 1], [0, 2, 0, 1], [0, 0, 1, 0]]  # last column: no token
    assert by_token["per_class_f1"] == {"no DR": pytest.approx(0.8), "mild DR": pytest.approx(0.8),
                                        "severe DR": 1.0}
    assert by_token["macro_f1"] == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    assert scores.agreement == {"both_agree": 2, "disagree": 1, "disagree_ids": [3], "token_only": 2,
                                "text_only": 1, "neither": 1}
    assert sum(v for k, v in scores.agreement.items() if k != "disagree_ids") == scores.total == 7
    assert "token scoring" not in capsys.readouterr().err


def test_vocabulary_keywords_help_the_text_not_the_token(tmp_path):
    dataset, rows = _dataset(tmp_path, [c[0] for c in CASES] + ["severe DR"])
    predictions = _predictions(tmp_path, rows, [c[1] for c in CASES] + [f"{SEVERE} severe DR"])
    plain, with_vocab = score_generated(predictions, dataset), score_generated(predictions, dataset, VOCAB)
    assert with_vocab.by_token == plain.by_token
    assert with_vocab.unparseable == 2  # "mild diabetic retinopathy" is a synonym now (sample 4)
    assert with_vocab.agreement["both_agree"] == 3


def test_result_json_keeps_the_text_fields_and_adds_token_blocks(tmp_path, capsys):
    """``attok eval classify`` writes them; ``by_token`` has the top level's metric keys for the report."""
    from llamafactory_attok.cli import main

    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    predictions = _predictions(tmp_path, rows, [f"{NO} junk", f"{MILD} junk"])
    out = tmp_path / "scores.json"
    assert main(["eval", "classify", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                 str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "per_class_f1", "confusion", "unparseable", "total", "classes"} <= set(result)
    assert result["accuracy"] == 0.0 and result["unparseable"] == 2  # the text reading of junk
    assert result["token_scoring"] == "available" and result["by_token"]["accuracy"] == 1.0
    assert {"accuracy", "macro_f1", "per_class_f1", "no_token"} <= set(result["by_token"])
    assert result["agreement"]["token_only"] == 2
    assert out.with_suffix(".confusion.png").is_file()


def test_predictions_without_any_attribute_token_say_so(tmp_path, capsys):
    """LF's default skip_special_tokens: true strips the tokens; no silent 0."""
    from llamafactory_attok.cli import main

    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    predictions = _predictions(tmp_path, rows, ["no DR", "junk"])
    scores = score_generated(predictions, dataset)
    assert scores.token_scoring == f"{TOKEN_UNAVAILABLE}: {NO_SPECIAL_AT_ALL}"
    assert scores.by_token is None and scores.agreement is None and scores.accuracy == 0.5
    err = capsys.readouterr().err
    assert ("token scoring unavailable: predictions carry no attribute tokens: no <|…|> token appears in any "
            "prediction: either do_predict removed special tokens (skip_special_tokens: true") in err
    out = tmp_path / "scores.json"
    assert main(["eval", "classify", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                 str(out)]) == 0
    assert "token scoring unavailable" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["by_token"] is None and result["token_scoring"].startswith("unavailable:")


def test_vanilla_dataset_has_no_token_reading_and_no_note(tmp_path, capsys):
    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"], vanilla=True)
    scores = score_generated(_predictions(tmp_path, rows, ["no DR", "mild DR"]), dataset)
    assert scores.accuracy == 1.0 and scores.by_token is None and scores.token_scoring.startswith("not applicable")
    assert capsys.readouterr().err == ""


def test_token_map_from_answers_and_vocabulary(tmp_path):
    # a token shared by several classes (modality) identifies none and is skipped in generations
    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"], prefix="<|fundus_photo|> ")
    classes = ["no DR", "mild DR"]
    tokens = token_map(rows, classes, None)
    assert tokens.classes == {NO: 0, MILD: 1} and "<|fundus_photo|>" in tokens.known
    assert parse_token(f"<|fundus_photo|> {MILD} {NO}", tokens.classes) == 1
    assert class_tokens(f"<|fundus_photo|> {MILD} {NO}<|im_end|>", tokens.classes) == [1, 0]
    assert parse_token("<|fundus_photo|> mild DR", tokens.classes) is None
    # a vocabulary token in no answer maps through its keyword (= a class label)
    vocab = AttributeVocab((NO, MILD, SEVERE), ("no DR", "mild diabetic retinopathy", "mild DR"))
    assert token_map(rows, classes, vocab).classes == {NO: 0, MILD: 1, SEVERE: 1}
    # a generation of the shared token alone has no class token: counted, not an error
    scores = score_generated(_predictions(tmp_path, rows, ["<|fundus_photo|> x", f"{MILD} x"]), dataset)
    assert scores.by_token["no_token"] == 1 and scores.by_token["accuracy"] == 0.5


# --- bad input -----------------------------------------------------------------------------------------------------


def test_vocabulary_token_of_no_class_names_the_token(tmp_path, capsys):
    from llamafactory_attok.cli import main

    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    predictions = _predictions(tmp_path, rows, [NO, MILD])
    with pytest.raises(AttTokError, match=r"test.json: vocabulary token <\|fundus_severe_dr\|> \('severe DR'\) "
                                          r"maps to no class of the dataset"):
        score_generated(predictions, dataset, VOCAB)
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("".join(f'"{t}": {k}\n' for t, k in VOCAB.as_dict().items()))
    out = tmp_path / "scores.json"
    assert main(["eval", "classify", "--predictions", str(predictions), "--dataset", str(dataset), "--vocab",
                 str(vocab), "--out", str(out)]) == 2
    assert "vocabulary token <|fundus_severe_dr|>" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(("predict", "found"), [(3, "predict is int"), (None, "predict is NoneType"),
                                                ([NO, "no DR"], "predict is list")])
def test_prediction_that_is_not_a_string_names_file_and_line(tmp_path, predict, found):
    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    predictions = _predictions(tmp_path, rows, [f"{NO} no DR", "x"])
    lines = predictions.read_text().splitlines()
    lines[1] = json.dumps({"prompt": "p", "predict": predict, "label": rows[1]["messages"][1]["content"]})
    predictions.write_text("\n".join(lines) + "\n")
    with pytest.raises(AttTokError, match=rf"generated_predictions.jsonl: line 2: a prediction needs the string "
                                          rf"field\(s\) predict .*; {found}"):
        score_generated(predictions, dataset)


def test_prediction_line_that_is_not_an_object(tmp_path):
    dataset, rows = _dataset(tmp_path, ["no DR"])
    predictions = tmp_path / "generated_predictions.jsonl"
    predictions.write_text('["no DR"]\n')
    with pytest.raises(AttTokError, match=r"line 1: .*; got a JSON list, not an object"):
        score_generated(predictions, dataset)


def test_a_model_that_wrote_no_attribute_token_is_not_blamed_on_skip_special_tokens(tmp_path):
    """Predictions that keep <|im_end|> were made with skip_special_tokens: false: the hint says the model wrote no
    attribute token (what was seen), not "was skip_special_tokens true?"."""
    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    predictions = _predictions(tmp_path, rows, ["no DR<|im_end|>", "junk<|im_end|>"])
    scores = score_generated(predictions, dataset)
    assert scores.token_scoring == (f"{TOKEN_UNAVAILABLE}: they keep other special tokens (<|im_end|>), so special "
                                    "tokens were not skipped: the model wrote no attribute token")
    assert "skip_special_tokens: true" not in scores.token_scoring
