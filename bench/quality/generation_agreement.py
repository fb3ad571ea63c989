"""`python -m bench.quality.generation_agreement`: on the model `make demo` trains, does generation start with the
one-forward prediction? (BENCHMARKS §5b)

For every test image of the demo's RetinaMNIST sample: the one-forward top-1 attribute token (what `attok predict`
reads, LF's SFT collator with the training positions) against the first token LF writes by greedy ``do_predict``
(``predict_with_generate``, batch 1 and batch 4 with left padding) and by its chat engine (``ChatModel``, the engine
behind ``chat`` / ``api`` / the WebUI). Two arms, each in a fresh process: ``fixed`` (the plugin as shipped) and
``lf-positions`` (the plugin's generation fix switched off: what LF 0.9.5 + transformers 5.6 do by themselves).
Needs ``outputs/demo/attok`` (run ``make demo`` first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "outputs" / "demo" / "attok"
DATA = REPO / "data"
TEST = "retina_attok_test"


def _first_token(text: str, tokens: list[str]) -> str:
    text = text.strip()
    return next((t for t in tokens if text.startswith(t)), text.split()[0] if text.split() else "")


def child(arm: str, work: Path) -> dict:
    from llamafactory.chat import ChatModel
    from llamafactory.train.tuner import run_exp

    from llamafactory_attok.eval.attribute_classifier import (
        attribute_probabilities,
        load_model_for_inference,
        read_samples,
    )

    if arm == "lf-positions":
        import llamafactory_attok.lf_patches.loader as loader

        loader.generate_with_training_positions = lambda model: False
    model, tokenizer, processor = load_model_for_inference(str(DEMO))
    vocab = json.loads((DEMO / "attok_config.json").read_text())["token_ids"]
    tokens = tokenizer.convert_ids_to_tokens(vocab)
    samples = read_samples(DATA / f"{TEST}.json")
    top1 = [tokens[int(p.argmax())] for p in attribute_probabilities(model, processor, samples, vocab)]
    del model
    found: dict = {"arm": arm, "images": len(samples)}
    for batch in (1, 4):
        out = work / arm / f"predict_b{batch}"
        run_exp({"model_name_or_path": str(DEMO), "stage": "sft", "do_predict": True, "predict_with_generate": True,
                 "eval_dataset": TEST, "dataset_dir": str(DATA), "template": "qwen2_vl", "cutoff_len": 256,
                 "per_device_eval_batch_size": batch, "max_new_tokens": 2, "skip_special_tokens": False,
                 "attok_show_tokens": True, "output_dir": str(out), "overwrite_output_dir": True,
                 "report_to": "none", "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
                 "overwrite_cache": True, "do_sample": False})
        rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
        firsts = [_first_token(r["predict"], tokens) for r in rows]
        found[f"do_predict_b{batch}_differs"] = sum(a != b for a, b in zip(firsts, top1, strict=True))
    chat = ChatModel({"model_name_or_path": str(DEMO), "template": "qwen2_vl", "infer_dtype": "float32",
                      "do_sample": False, "max_new_tokens": 2, "attok_show_tokens": True})
    differs = 0
    for sample, expected in zip(samples, top1, strict=True):
        question = sample.example["_prompt"][0]["content"]
        reply = chat.chat([{"role": "user", "content": question}], images=list(sample.example["_images"]))
        differs += _first_token(reply[0].response_text, tokens) != expected
    found["chat_differs"] = differs
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", default=str(REPO / "outputs" / "bench_generation"))
    parser.add_argument("--out", default=str(REPO / "bench_results" / "generation_agreement.json"))
    ns = parser.parse_args(argv)
    work = Path(ns.work)
    if ns.child:
        result = child(ns.child, work)
        (work / f"{ns.child}.json").write_text(json.dumps(result))
        return 0
    if not (DEMO / "attok_config.json").is_file():
        raise SystemExit(f"{DEMO} not found: run `make demo` first")
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for arm in ("fixed", "lf-positions"):
        subprocess.run([sys.executable, "-m", "bench.quality.generation_agreement", "--child", arm, "--work",
                        str(work)], cwd=REPO, check=True)
        results.append(json.loads((work / f"{arm}.json").read_text()))
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(f"{r['arm']:13s} first generated token != one-forward top-1 on: do_predict batch 1 "
              f"{r['do_predict_b1_differs']}/{r['images']}, batch 4 {r['do_predict_b4_differs']}/{r['images']}, "
              f"ChatModel {r['chat_differs']}/{r['images']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
