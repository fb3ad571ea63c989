"""Accuracy at CPU scale, the regime too small to learn (BENCHMARKS.md §4d): the tiny Qwen2-VL trained from scratch —
full fine-tuning (LoRA cannot learn on a random base) — with arms identical except AttTok: vanilla (token-free
answers), tokens only, +ACC, +ACM, +both (Fig. 3). Every arm gets the same recipe, data order and seeds. AttTok arms
are scored by the one-forward attribute classifier and by retrieval (Table 6); vanilla by class-name likelihood (its
fair one-forward counterpart). Datasets are built by `attok data classify` from the MedMNIST files in data/sources.

    python -m bench.quality.accuracy [--datasets retina pneumonia] [--formats open close] [--towers frozen trainable]
                             [--seeds 1 2 3] [--per-class 40] [--epochs 4] --out bench_results/accuracy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.science.medmnist import CLASS_MAPS as MEDMNIST
from bench.science.medmnist import COMPONENTS
from llamafactory_attok.data import sources
from llamafactory_attok.data.classify import build_classification
from llamafactory_attok.eval.classification import mean_std
from llamafactory_attok.eval.predict import run_predict
from llamafactory_attok.tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[2]
CLASS_MAPS = {name: MEDMNIST[name] for name in ("retina", "pneumonia")}
ARMS = {"vanilla": None, **COMPONENTS}  # name -> attok keys (None: vanilla, token-free answers)


def build_data(out: Path, dataset: str, per_class: int) -> None:
    folder, class_map = CLASS_MAPS[dataset]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{dataset}_classes.yaml").write_text(class_map)
    items = [i for i in sources.from_npz(REPO / "data" / "sources" / folder / f"{folder}.npz")]
    kept, seen = [], {}
    for item in items:
        key = (item.split, item.label)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= (per_class if item.split == "train" else max(per_class // 2, 10)):
            kept.append(item)
    for vanilla in (False, True):
        build_classification(kept, out / f"{dataset}_classes.yaml", out, dataset, image_size=56, augment=False,
                             vanilla=vanilla, overwrite=True)


def train(model: Path, data: Path, out: Path, dataset: str, fmt: str, arm: str, tower: str, seed: int,
          epochs: int) -> None:
    from llamafactory.train.tuner import run_exp

    attok = ARMS[arm]
    name = f"{dataset}_{fmt}_train" if attok is not None else f"{dataset}_vanilla_{fmt}_train"
    args = {"model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "full",
            "freeze_vision_tower": tower == "frozen", "freeze_multi_modal_projector": tower == "frozen",
            "dataset": name, "dataset_dir": str(data), "template": "qwen2_vl", "cutoff_len": 256,
            "overwrite_cache": True, "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
            "output_dir": str(out), "overwrite_output_dir": True, "logging_steps": 10, "save_strategy": "no",
            "per_device_train_batch_size": 8, "learning_rate": 2e-3, "weight_decay": 1e-4,
            "num_train_epochs": epochs, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "seed": seed,
            "data_seed": seed, "report_to": "none", "plot_loss": False}
    if attok is not None:
        args.update({"attok": True, "attok_vocab": str(data / f"{dataset}_vocab.yaml"), **attok})
    run_exp(args)


def evaluate(run: Path, data: Path, dataset: str, fmt: str, arm: str) -> dict:
    if ARMS[arm] is None:
        return run_predict(str(run), str(data / f"{dataset}_vanilla_{fmt}_test.json"), str(run / "pred.jsonl"),
                           mode="likelihood")
    return run_predict(str(run), str(data / f"{dataset}_{fmt}_test.json"), str(run / "pred.jsonl"), batch_size=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["retina", "pneumonia"])
    parser.add_argument("--formats", nargs="+", default=["open", "close"])
    parser.add_argument("--towers", nargs="+", default=["frozen", "trainable"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="bench_results/accuracy")
    ns = parser.parse_args()
    out = Path(ns.out)
    data = out / "data"
    model = build_tiny_model(out / "tiny_qwen2_vl", "qwen2_vl")
    results = []
    for dataset in ns.datasets:
        build_data(data, dataset, ns.per_class)
        for fmt in ns.formats:
            for tower in ns.towers:
                for arm in ns.arms:
                    for seed in ns.seeds:
                        run = out / "runs" / f"{dataset}_{fmt}_{tower}_{arm.strip('+')}_s{seed}"
                        train(model, data, run, dataset, fmt, arm, tower, seed, ns.epochs)
                        metrics = evaluate(run, data, dataset, fmt, arm)
                        results.append({"dataset": dataset, "format": fmt, "tower": tower, "arm": arm,
                                        "seed": seed, **metrics})
                        (out / "results.json").write_text(json.dumps(results, indent=1))
    print(summary(results))


def summary(results: list[dict]) -> str:
    lines = ["| dataset | format | tower | arm | accuracy | macro-F1 | retrieval acc. | seeds |", "|" + "---|" * 8]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["format"], r["tower"], r["arm"]), []).append(r)
    for key, rows in groups.items():
        acc, f1 = mean_std([r["accuracy"] for r in rows]), mean_std([r["macro_f1"] for r in rows])
        retrieval = [r["retrieval_accuracy"] for r in rows if "retrieval_accuracy" in r]
        ret = "{:.3f} ± {:.3f}".format(*mean_std(retrieval)) if retrieval else "—"
        lines.append(f"| {' | '.join(key)} | {acc[0]:.3f} ± {acc[1]:.3f} | {f1[0]:.3f} ± {f1[1]:.3f} | {ret} | "
                     f"{len(rows)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
