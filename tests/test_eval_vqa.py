"""VQA scoring: rules first, then an LLM judge on a real local OpenAI-compatible server; endpoint down -> rules-only,
flagged, non-zero exit."""

import json
import socket

from conftest import run_cli
from scripted_openai import ScriptedServer, judge_reply

ROWS = [("Is there a fracture?", "yes", "closed", "Yes, there is."), ("Is the heart enlarged?", "no", "closed", "yes"),
        ("What organ is shown?", "liver", "open", "liver"), ("What is abnormal?", "pleural effusion", "open",
                                                                "a large pleural effusion on the left"),
        ("What modality?", "ct", "open", "mri")]


def _files(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"<image>{q}"}, {"role": "assistant", "content": a}],
             "images": ["x.png"], "answer_type": t} for q, a, t, _ in ROWS]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps({"prompt": "", "predict": p, "label": a}) + "\n"
                                                 for _, a, _, p in ROWS))
    return tmp_path / "pred.jsonl", tmp_path / "test.json"


def test_rules_then_judge_with_cache(tmp_path):
    predictions, dataset = _files(tmp_path)
    with ScriptedServer(responder=judge_reply) as server:
        args = ["attok", "eval", "vqa", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                str(tmp_path / "vqa.json"), "--judge-base-url", server.url, "--judge-model", "scripted"]
        result = run_cli(args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads((tmp_path / "vqa.json").read_text())
        assert report["decided_by_rules"] == 2 and report["decided_by_judge"] == 3
        assert report["closed_accuracy"] == 0.5 and report["open_accuracy"] == 2 / 3
        calls = server.completions
        assert run_cli(args, cwd=tmp_path).returncode == 0 and server.completions == calls  # cached


def test_judge_endpoint_down_gives_rules_only_and_says_so(tmp_path):
    predictions, dataset = _files(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    result = run_cli(["attok", "eval", "vqa", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                      str(tmp_path / "vqa.json"), "--judge-base-url", f"http://127.0.0.1:{port}/v1",
                      "--max-retries", "0", "--timeout", "2"], cwd=tmp_path)
    assert result.returncode == 3
    report = json.loads((tmp_path / "vqa.json").read_text())
    assert report["judge"].startswith("unavailable") and "rules-only" in report["judge"]
    assert report["decided_by_judge"] == 0 and report["closed_accuracy"] == 0.5 and report["open_accuracy"] == 1 / 3
