"""VQA scoring under the paper's and MedEvalKit's protocols side by side: rules first then an LLM judge on a real
local OpenAI-compatible server; every open question judged (MedEvalKit); token F1 / BLEU-1; per-type breakdowns;
the Table 2 report; endpoint down -> rules-only, flagged, non-zero exit."""

import json
import math
import socket

import pytest
from conftest import run_cli
from nltk.translate.bleu_score import sentence_bleu
from scripted_openai import ScriptedServer, any_judge_reply

from llamafactory_attok.cli import main
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.eval.normalize import normalize
from llamafactory_attok.eval.text_metrics import bleu1, token_f1
from llamafactory_attok.eval.vqa import parse_verdict, score_vqa
from llamafactory_attok.eval.vqa_protocols import extract_answer

ROWS = [("Is there a fracture?", "yes", "closed", "Yes, there is."), ("Is the heart enlarged?", "no", "closed", "yes"),
        ("What organ is shown?", "liver", "open", "liver"), ("What is abnormal?", "pleural effusion", "open",
                                                                "a large pleural effusion on the left"),
        ("What modality?", "ct", "open", "mri")]


def _files(tmp_path, rows=ROWS, extra=None):
    data = [{"messages": [{"role": "user", "content": f"<image>{q}"}, {"role": "assistant", "content": a}],
             "images": ["x.png"], "answer_type": t, **(extra[i] if extra else {})}
            for i, (q, a, t, _) in enumerate(rows)]
    (tmp_path / "test.json").write_text(json.dumps(data))
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps({"prompt": "", "predict": p, "label": a}) + "\n"
                                                 for _, a, _, p in rows))
    return tmp_path / "pred.jsonl", tmp_path / "test.json"


def _args(tmp_path, predictions, dataset, *extra):
    return ["attok", "eval", "vqa", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
            str(tmp_path / "vqa.json"), *extra]


def test_both_protocols_with_judge_and_cache(tmp_path):
    predictions, dataset = _files(tmp_path)
    with ScriptedServer(responder=any_judge_reply) as server:
        args = _args(tmp_path, predictions, dataset, "--judge-base-url", server.url, "--judge-model", "scripted",
                     "--name", "toy")
        result = run_cli(args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads((tmp_path / "vqa.json").read_text())
        paper, mek = report["protocols"]["paper"], report["protocols"]["medevalkit"]
        assert paper["decided_by_rules"] == 2 and paper["decided_by_judge"] == 3  # judge only where rules fail
        assert paper["closed_accuracy"] == 0.5 and paper["open_accuracy"] == 2 / 3 and paper["accuracy"] == 0.6
        assert mek["decided_by_rules"] == 2 and mek["decided_by_judge"] == 3  # every open question judged
        assert mek["closed_accuracy"] == 0.5 and mek["open_accuracy"] == 2 / 3
        assert server.completions == 6  # 3 paper + 3 MedEvalKit-style prompts
        assert "| paper | 50.0 | 66.7 | 60.0 | 2 / 3 | judge: scripted |" in result.stdout
        assert "| medevalkit | 50.0 | 66.7 | 60.0 | 2 / 3 | judge: scripted |" in result.stdout
        again = run_cli([*args, "--overwrite"], cwd=tmp_path)
        assert again.returncode == 0 and server.completions == 6  # both caches hit
    assert (tmp_path / "vqa.judge_cache.json").is_file() and (tmp_path / "vqa.medevalkit_judge_cache.json").is_file()


def test_judge_endpoint_down_gives_rules_only_and_says_so(tmp_path):
    predictions, dataset = _files(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    result = run_cli(_args(tmp_path, predictions, dataset, "--judge-base-url", f"http://127.0.0.1:{port}/v1",
                           "--max-retries", "0", "--timeout", "2"), cwd=tmp_path)
    assert result.returncode == 3
    report = json.loads((tmp_path / "vqa.json").read_text())
    for protocol in ("paper", "medevalkit"):
        scores = report["protocols"][protocol]
        assert scores["judge"].startswith("unavailable") and "rules-only" in scores["judge"]
        assert scores["decided_by_judge"] == 0
        assert scores["closed_accuracy"] == 0.5 and scores["open_accuracy"] == 1 / 3
    assert report["protocols"]["medevalkit"]["open_without_judge_verdict"] == 3


def test_medevalkit_rules_differ_from_the_papers_where_documented(tmp_path):
    rows = [("Is it normal?", "yes", "closed", "The answer is yes."), ("Is it big?", "no", "closed", "Maybe, no."),
            ("Which is larger?", "lung", "closed", "\\boxed{Lung}"),
            ("Where?", "liver", "open", "<answer>liver</answer>")]
    predictions, dataset = _files(tmp_path, rows)
    report = score_vqa(predictions, dataset, {"paper": None, "medevalkit": None})
    paper, mek = report["protocols"]["paper"], report["protocols"]["medevalkit"]
    assert paper["counts"] == {"closed": {"n": 3, "correct": 0}, "open": {"n": 1, "correct": 0}}
    assert mek["counts"] == {"closed": {"n": 3, "correct": 3}, "open": {"n": 1, "correct": 1}}
    assert mek["open_without_judge_verdict"] == 1 and mek["judge"] == "none"
    assert extract_answer("Final answer: the liver") == " the liver"


def test_open_text_scores_match_hand_computation_and_nltk(tmp_path):
    predictions, dataset = _files(tmp_path)
    text = score_vqa(predictions, dataset, {"medevalkit": None})["protocols"]["medevalkit"]["open_text"]
    # liver/liver: F1 1, BLEU-1 1; effusion: F1 4/9 (P 2/7, R 1), BLEU-1 2/7; ct/mri: 0, 0
    assert text["f1"] == pytest.approx((1 + 4 / 9 + 0) / 3)
    assert text["bleu1"] == pytest.approx((1 + 2 / 7 + 0) / 3) and text["exact_match"] == pytest.approx(1 / 3)
    for pred, ref in [("a large pleural effusion on the left", "pleural effusion"), ("effusion", "pleural effusion"),
                      ("no no no", "no"), ("right lobe", "left lung lobe")]:
        expected = sentence_bleu([normalize(ref).split()], normalize(pred).split(), weights=(1,))
        assert bleu1(pred, ref) == pytest.approx(expected)
    assert bleu1("effusion", "pleural effusion") == pytest.approx(math.exp(1 - 2))
    assert token_f1("<|ct_lung|> Lung.", "lung") == 1.0 and token_f1("", "lung") == 0.0


def test_breakdowns_by_content_type_and_question_type(tmp_path):
    extra = [{"content_type": "Abnormality", "question_type": "PRES"}, {"content_type": "Size"},
             {"content_type": "Organ", "question_type": "ORGAN"}, {"content_type": "Abnormality"},
             {"content_type": "Modality", "question_type": "MODALITY"}]
    predictions, dataset = _files(tmp_path, extra=extra)
    paper = score_vqa(predictions, dataset, {"paper": None})["protocols"]["paper"]
    assert paper["by_content_type"]["Abnormality"] == {
        "n": 2, "accuracy": 0.5, "closed": {"n": 1, "correct": 1, "accuracy": 1.0},
        "open": {"n": 1, "correct": 0, "accuracy": 0.0}}
    assert list(paper["by_content_type"]) == ["Abnormality", "Modality", "Organ", "Size"]
    assert {k: v["n"] for k, v in paper["by_question_type"].items()} == {"MODALITY": 1, "ORGAN": 1, "PRES": 1}


def test_table2_report_over_runs_and_datasets(tmp_path, capsys):
    predictions, dataset = _files(tmp_path)
    runs = []
    for seed, name in [(1, "VQA-RAD"), (2, "VQA-RAD"), (1, "SLAKE")]:
        out = tmp_path / f"{name}_{seed}.json"
        assert main(["eval", "vqa", "--predictions", str(predictions), "--dataset", str(dataset), "--out", str(out),
                     "--name", name]) == 0
        runs += ["--vqa", f"attok@{seed}={out}"]
    assert main(["eval", "report", *runs, "--out", str(tmp_path / "report.md")]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| arm | seeds | VQA-RAD closed | VQA-RAD open | VQA-RAD overall | SLAKE closed | SLAKE open | " \
           "SLAKE overall |" in report
    assert "| attok | 2 | 50.0 ± 0.0 | 33.3 ± 0.0 | 40.0 ± 0.0 | 50.0 ± 0.0 | 33.3 ± 0.0 | 40.0 ± 0.0 |" in report
    assert "Protocol — paper: exact match after normalisation first" in report
    assert "Protocol — medevalkit: closed yes/no by the first yes/no word" in report
    capsys.readouterr()
    assert main(["eval", "report", "--vqa", f"attok@1={tmp_path / 'SLAKE_1.json'}", "--vqa",
                 f"attok@1={tmp_path / 'SLAKE_1.json'}", "--out", str(tmp_path / "r2.md")]) == 2
    assert "run attok@1 already has a SLAKE result" in capsys.readouterr().err


def test_parse_verdict_formats():
    assert parse_verdict("<think>same</think>\n<judge>0</judge>") is True
    assert parse_verdict("<judge> 1 </judge>") is False
    assert parse_verdict('Sure: {"correct": true}') is True
    with pytest.raises(ValueError, match="malformed judge reply 'I think so'"):
        parse_verdict("I think so")


def test_bad_input_is_named(tmp_path, capsys):
    predictions, dataset = _files(tmp_path)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Q {question} A {answer} P {prediction} {reference}")
    assert main(["eval", "vqa", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                 str(tmp_path / "v.json"), "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-prompt",
                 str(prompt)]) == 2
    assert f"{prompt}: a judge prompt may use only {{question}}, {{answer}} and {{prediction}}" in \
        capsys.readouterr().err
    rows = json.loads(dataset.read_text())
    del rows[3]["answer_type"]
    dataset.write_text(json.dumps(rows))
    with pytest.raises(AttTokError, match=r"test.json: sample 3: needs `answer_type` closed or open"):
        score_vqa(predictions, dataset, {"paper": None})
    (tmp_path / "not_vqa.json").write_text('{"accuracy": 0.5}')
    assert main(["eval", "report", "--vqa", f"a@1={tmp_path / 'not_vqa.json'}", "--out", str(tmp_path / "r.md")]) == 2
    assert "not_vqa.json: not an `attok eval vqa` result" in capsys.readouterr().err
    assert main(["eval", "report", "--out", str(tmp_path / "r.md")]) == 2
    assert "eval report needs --run" in capsys.readouterr().err


def test_the_judge_cache_never_answers_for_another_judge_or_prompt(tmp_path):
    """The verdict cache is keyed on the judge model and its prompt too: a strict judge after a lenient one (or the
    same judge with another prompt) is asked again instead of inheriting the lenient verdicts."""
    from types import SimpleNamespace

    from llamafactory_attok.eval.vqa import Judge

    def client(verdict: str, asked: list):
        def create(**kwargs):
            asked.append(kwargs["model"])
            return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=verdict))])
        return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))

    cache, asked = tmp_path / "judge_cache.json", []
    prompt = "Q {question} A {answer} P {prediction}"
    assert Judge(client('{"correct": true}', asked), "lenient", prompt, cache).decide("q", "a", "p") is True
    assert Judge(client('{"correct": false}', asked), "strict", prompt, cache).decide("q", "a", "p") is False
    assert Judge(client('{"correct": false}', asked), "lenient", prompt + ".", cache).decide("q", "a", "p") is False
    assert Judge(client('{"correct": false}', asked), "lenient", prompt, cache).decide("q", "a", "p") is True  # cached
    assert asked == ["lenient", "strict", "lenient"]
