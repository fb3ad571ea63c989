"""Does AttTok help? A CPU-scale experiment in which the baseline learns (BENCHMARKS.md §4, issue 14).

Setting — every choice below is the same for every arm of a dataset:

- **Model**: the tiny Qwen2-VL (`attok tiny-model`, random weights), given a **label-free warm start**: one epoch of
  text-only full fine-tuning on the training questions, each answered by a class name drawn uniformly at random
  (no image, no true label). It teaches the random output head to write the answer words and `<|im_end|>` — with
  embed and head frozen, a random head cannot (its logits are bounded: NTP stalls at 4.77 nats and vanilla scores
  0.26 on PneumoniaMNIST val). The warm model's own accuracy is measured and reported: it knows no image-label link.
- **Trainable parameters** (`finetuning_type: freeze`, every LLM layer trainable, vision tower and merger frozen,
  input embedding and output head frozen): the vanilla arm trains the LLM layers; the AttTok arms train the same
  LLM layers plus exactly what AttTok adds (its attribute rows of embed and head, ACC, θ, the keyword embeddings).
  This is the paper's LoRA situation (embed and head frozen in both arms) at full rank on the LLM layers. After
  every run the elements that changed against the warm model are counted per group (``changed``) and printed.
- **Recipe** (the paper's, but learning rate and epochs): AdamW, weight decay 1e-4, cosine, 10 % warm-up, batch 32,
  images 112² (16 visual tokens); learning rate and epochs per dataset were chosen on the **val** split by
  ``python -m bench.science select`` with the vanilla arm (so the choice, if anything, favours the baseline) and are
  written in ``RECIPES``. The selection never reads test; each run's test split is scored once per scorer (the grid
  tabulates val and test side by side, and is read on val).
- **Data**: the full official MedMNIST splits, built by `attok data classify` (open-ended questions), no offline
  balancing (PneumoniaMNIST ≈ 3:1) except in the ``balanced`` part.
- **Scoring**: one-forward (AttTok: attribute-token probabilities and retrieval; vanilla: class-name likelihood) and
  generative (LF ``do_predict`` with greedy decoding + `attok eval classify`; unparseable answers count as wrong).

Parts: ``main`` (vanilla vs AttTok = tokens + ACC + ACM, all three datasets), ``ablation`` (tokens only, +ACC,
+ACM on the ``FOCUS`` dataset, PneumoniaMNIST; "+both" is main's AttTok), ``balanced`` (PneumoniaMNIST with offline
balancing), ``grid`` (γ and λ on ``FOCUS``, PneumoniaMNIST, one seed, val and test), ``step_time`` (§3 at LLM width
256, 4 layers).
Runs are independent and go ``--workers`` at a time, one torch thread each (two single-threaded runs on the two
cores finish sooner than one two-threaded run after the other); a rerun skips runs already in results.json.

    python -m bench.science select [--out bench_results/science_select]
    python -m bench.science run [--parts main ablation balanced grid step_time] [--seeds 1 2 3]
                                [--out bench_results/science]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from bench.medmnist import CLASS_MAPS, COMPONENTS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATASETS = CLASS_MAPS  # name -> (MedMNIST folder, class map)
RECIPES = {  # learning rate and epochs: the val argmax of `select` (BENCHMARKS.md §4a has its table; BreastMNIST:
    # every point ties at the majority rate, the first in grid order is kept)
    "pneumonia": {"lr": 5e-4, "epochs": 3}, "breast": {"lr": 5e-4, "epochs": 3}, "retina": {"lr": 5e-4, "epochs": 10}}
SELECT_RATES, SELECT_EPOCHS = (1e-4, 5e-4, 2e-3, 5e-3), (3, 10)
BATCH, IMAGE_SIZE = 32, 112
ARMS = {  # name -> attok keys (None: vanilla, token-free answers); "attok" is Fig. 3's "+both"
    "vanilla": None, "attok": COMPONENTS["+both"], **{k: v for k, v in COMPONENTS.items() if k != "+both"}}
GAMMAS, LAMBDAS = (0.05, 0.1, 0.5, 1.0), (0.5, 1.0, 2.0)
FOCUS = "pneumonia"  # the dataset of the ablation and of the γ / λ grid: the one where the baseline learns most
PARTS = ("main", "ablation", "balanced", "grid", "step_time")


THREADS = {"per_process": None}  # set by --workers: one torch thread per run when runs share the cores


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1", TOKENIZERS_PARALLELISM="false", **extra)
    if THREADS["per_process"]:
        env["OMP_NUM_THREADS"] = str(THREADS["per_process"])
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# ---- data ---------------------------------------------------------------------------------------------------------

def data_name(dataset: str, balanced: bool = False) -> str:
    """Name prefix of a build (`{name}_open_train`, ...)."""
    return f"{dataset}_bal" if balanced else dataset


def build_data(data: Path, dataset: str, balanced: bool = False) -> str:
    """`attok data classify` on the full official split (attribute and vanilla answers); returns the name prefix."""
    folder, class_map = DATASETS[dataset]
    name = data_name(dataset, balanced)
    source = REPO / "data" / "sources" / folder / f"{folder}.npz"
    stamp_path = data / f"{name}_build.json"  # what the build was made from: another one is rebuilt, not reused
    stamp = {"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "class_map": class_map,
             "image_size": IMAGE_SIZE, "balanced": balanced}
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return name
    data.mkdir(parents=True, exist_ok=True)
    classes = data / f"{dataset}_classes.yaml"
    classes.write_text(class_map)
    for vanilla in (False, True):
        cmd = [str(BIN / "attok"), "data", "classify", str(source), "--format", "npz", "--class-map", str(classes),
               "--out", str(data), "--name", name, "--image-size", str(IMAGE_SIZE), "--overwrite",
               *([] if balanced else ["--no-augment"]), *(["--vanilla"] if vanilla else [])]
        subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)
    stamp_path.write_text(json.dumps(stamp, indent=1))
    return name


def build_warm_data(data: Path, name: str, seed: int = 0) -> str:
    """Label-free warm-start text: each training question (image removed) answered by a uniformly random class."""
    rows = json.loads((data / f"{name}_vanilla_open_train.json").read_text())
    classes = sorted({row["label"] for row in rows})
    rng = random.Random(seed)
    warm = [{"messages": [{"role": "user", "content": row["messages"][0]["content"].replace("<image>", "")},
                          {"role": "assistant", "content": rng.choice(classes)}]} for row in rows]
    (data / f"{name}_warm.json").write_text(json.dumps(warm))
    info_path = data / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info[f"{name}_warm"] = {"file_name": f"{name}_warm.json", "formatting": "sharegpt",
                            "columns": {"messages": "messages"},
                            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                     "assistant_tag": "assistant"}}
    info_path.write_text(json.dumps(info, indent=1))
    return f"{name}_warm"


# ---- runs ---------------------------------------------------------------------------------------------------------

def _common(model: Path, data: Path, out: Path, seed: int) -> dict:
    return {"model_name_or_path": str(model), "stage": "sft", "dataset_dir": str(data), "template": "qwen2_vl",
            "cutoff_len": 256, "overwrite_cache": True, "preprocessing_num_workers": 1,
            "dataloader_num_workers": 0, "output_dir": str(out), "overwrite_output_dir": True, "seed": seed,
            "data_seed": seed, "report_to": "none", "plot_loss": False, "bf16": False}


def _run_lf(args: dict, out: Path) -> None:
    """One LF run in its own process (`llamafactory-cli train`), its output kept next to the results."""
    out.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.yaml"
    import yaml

    config.write_text(yaml.safe_dump(args, sort_keys=False))
    cache = out / ".datasets_cache"  # runs side by side never share a datasets cache file
    with open(out.parent / f"{out.name}.log", "w") as log:
        result = subprocess.run([str(BIN / "llamafactory-cli"), "train", str(config)],
                                env=_env(HF_DATASETS_CACHE=str(cache)), stdout=log, stderr=subprocess.STDOUT)
    shutil.rmtree(cache, ignore_errors=True)
    if result.returncode:
        raise RuntimeError(f"LF run failed ({result.returncode}): see {out.parent / (out.name + '.log')}")


def warm_start(base: Path, data: Path, name: str, out: Path) -> Path:
    """The label-free warm start (module docstring), reused only when made from the same data build."""
    built_from = (data / f"{name}_build.json").read_text()
    if (out / "model.safetensors").is_file() and (out / "built_from.json").is_file() \
            and (out / "built_from.json").read_text() == built_from:
        return out
    dataset = build_warm_data(data, name)
    args = {**_common(base, data, out, 0), "do_train": True, "finetuning_type": "full", "dataset": dataset,
            "per_device_train_batch_size": 8, "learning_rate": 2e-3, "num_train_epochs": 1,
            "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "logging_steps": 20, "save_strategy": "no"}
    _run_lf(args, out)
    (out / "built_from.json").write_text(built_from)
    return out


def train(model: Path, data: Path, out: Path, name: str, arm: str, seed: int, lr: float, *, epochs: int,
          curves: bool = False, **attok_overrides: float) -> float:
    """One arm, `llamafactory-cli train`: every LLM layer trainable, embed / head / vision tower / merger frozen
    (AttTok makes its K attribute rows trainable); the same seed sets data order and init of both arms.
    Returns the wall seconds. A leftover folder of an interrupted run is removed first."""
    if out.exists():
        shutil.rmtree(out)
    attok = ARMS[arm]
    layers = json.loads((model / "config.json").read_text())["text_config"]["num_hidden_layers"]
    args = {**_common(model, data, out, seed), "do_train": True, "finetuning_type": "freeze",
            "freeze_trainable_layers": layers, "freeze_trainable_modules": "all", "freeze_vision_tower": True,
            "freeze_multi_modal_projector": True,
            "dataset": f"{name}_open_train" if attok is not None else f"{name}_vanilla_open_train",
            "per_device_train_batch_size": BATCH, "learning_rate": lr, "weight_decay": 1e-4,
            "num_train_epochs": epochs, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "logging_steps": 5,
            "save_strategy": "epoch" if curves else "no", "save_only_model": True}
    if attok is not None:
        args.update({"attok": True, "attok_vocab": str(data / f"{name}_vocab.yaml"), **attok, **attok_overrides})
    start = time.time()
    _run_lf(args, out)
    return time.time() - start


def one_forward(run: Path, data: Path, name: str, arm: str, split: str) -> dict:
    """`attok predict` (its own process): attribute-token probabilities (AttTok) or class-name likelihood
    (vanilla), plus retrieval for AttTok."""
    vanilla = ARMS[arm] is None
    dataset = data / (f"{name}_vanilla_open_{split}.json" if vanilla else f"{name}_open_{split}.json")
    out = run / f"one_forward_{split}.jsonl"
    out.unlink(missing_ok=True)
    cmd = [str(BIN / "attok"), "predict", "--model", str(run), "--dataset", str(dataset), "--out", str(out),
           "--mode", "likelihood" if vanilla else "attribute", "--batch-size", "32"]
    with open(run / f"one_forward_{split}.log", "w") as log:
        subprocess.run(cmd, check=True, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    if metrics.get("skipped"):
        raise RuntimeError(f"{dataset}: {metrics['skipped']} samples skipped (see {out.with_suffix('.metrics.json')})")
    keep = ("accuracy", "macro_f1", "retrieval_accuracy", "per_class", "samples", "skipped")
    return {k: metrics[k] for k in keep if k in metrics}


def generative(run: Path, model_data: Path, name: str, arm: str) -> dict:
    """LF `do_predict` (greedy, 16 new tokens: the longest answer, "<|fundus_proliferative_dr|> proliferative DR",
    is 10 with <|im_end|>) on the test split, scored by `attok eval classify`'s rules."""
    from llamafactory_attok.eval.classification import score_generated

    dataset = f"{name}_vanilla_open_test" if ARMS[arm] is None else f"{name}_open_test"
    out = run / "generate"
    args = {**_common(run, model_data, out, 0), "do_predict": True, "predict_with_generate": True,
            "finetuning_type": "full", "eval_dataset": dataset, "max_new_tokens": 16, "do_sample": False,
            "per_device_eval_batch_size": 32, "skip_special_tokens": False,
            # both arms decode with the training positions (an AttTok folder always does; LF alone does not)
            "attok_training_positions": True}
    _run_lf(args, out)
    scores = score_generated(out / "generated_predictions.jsonl", model_data / f"{dataset}.json")
    keep = ("accuracy", "macro_f1", "per_class_f1", "unparseable", "total", "by_token")
    return {k: v for k, v in vars(scores).items() if k in keep}


def changed_elements(warm: Path, run: Path) -> dict[str, list[int]]:
    """Parameter elements that differ from the warm model, per group: [changed, total] (the trainable-parameter
    parity of the arms, measured rather than declared); -1 where there is nothing to compare with (new rows, AttTok
    modules: their total is what AttTok trains). LF pads a resized vocabulary to a multiple of 64 rows; only the K
    attribute rows among the added ones train (the others keep their resize value: `tests/test_rows.py` hashes)."""
    from safetensors import safe_open

    from llamafactory_attok.filenames import VOCAB_FILE_NAME
    from llamafactory_attok.vocab import load_vocab

    groups: dict[str, list[int]] = {}
    attok = (run / "attok_state.safetensors").is_file()
    if attok and not (run / VOCAB_FILE_NAME).is_file():
        raise FileNotFoundError(f"{run}: an AttTok run without {VOCAB_FILE_NAME}")
    attribute_rows = len(load_vocab(run / VOCAB_FILE_NAME)) if attok else 0

    def add(group: str, changed: int, total: int) -> None:
        entry = groups.setdefault(group, [0, 0])
        entry[0] = -1 if changed < 0 else entry[0] + changed
        entry[1] += total

    with safe_open(str(warm / "model.safetensors"), "pt") as before, \
            safe_open(str(run / "model.safetensors"), "pt") as after:
        for key in after.keys():
            new = after.get_tensor(key)
            old = before.get_tensor(key)
            if key.endswith(("embed_tokens.weight", "lm_head.weight")):
                part = "embed" if "embed" in key else "head"
                rows = old.shape[0]
                add(f"{part}: warm-model rows", int((new[:rows] != old).sum()), old.numel())
                if new.shape[0] > rows:  # rows added for the attribute tokens: no warm value to compare with
                    add(f"{part}: attribute rows (added by AttTok)", -1, attribute_rows * new.shape[1])
                continue
            group = "vision tower + merger" if key.startswith(("visual", "model.visual")) else \
                "LLM final norm" if key.endswith("model.norm.weight") else "LLM layers"
            add(group, int((new != old).sum()), old.numel())
    state = run / "attok_state.safetensors"
    if state.is_file():
        with safe_open(str(state), "pt") as attok:
            for key in attok.keys():
                if key.startswith("param."):
                    tensor = attok.get_tensor(key)
                    add("AttTok modules (ACC, θ, keyword embeddings)", -1, tensor.numel())
    return groups


def curve(run: Path, data: Path, name: str, arm: str) -> dict:
    """NTP / ACM per logged step (trainer_log.jsonl) and val accuracy after every epoch (the epoch checkpoints)."""
    from llamafactory_attok.data.lf_format import read_jsonl

    log = [entry for _, entry in read_jsonl(run / "trainer_log.jsonl")]
    ntp_key = "loss" if ARMS[arm] is None else "loss_ntp"
    points = {"step": [e["current_steps"] for e in log if ntp_key in e],
              "ntp": [e[ntp_key] for e in log if ntp_key in e],
              "acm": [e.get("loss_acm") for e in log if ntp_key in e], "val": []}
    for checkpoint in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        metrics = one_forward(checkpoint, data, name, arm, "val")
        points["val"].append([int(checkpoint.name.split("-")[1]), metrics["accuracy"]])
    return points


def plot_curves(curves: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({key.split("/")[0] for key in curves})
    fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.2 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for arm in ARMS:  # fixed order and colour per arm in every panel
            points = curves.get(f"{dataset}/{arm}")
            if points is None:
                continue
            style = {"label": arm, "color": f"C{list(ARMS).index(arm)}"}
            axes[row][0].plot(points["step"], points["ntp"], **style)
            if any(v is not None for v in points["acm"]):
                axes[row][1].plot(points["step"], points["acm"], **style)
            if points["val"]:
                axes[row][2].plot(*zip(*points["val"], strict=True), marker="o", **style)
        for col, title in enumerate(("NTP loss", "ACM loss", "val accuracy (one forward)")):
            axes[row][col].set_title(f"{dataset}: {title}")
            axes[row][col].set_xlabel("step")
            axes[row][col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the experiment -----------------------------------------------------------------------------------------------

class Experiment:
    """Results in ``out/results.json`` (rewritten atomically after every run; a rerun skips what is there)."""

    def __init__(self, out: Path) -> None:
        self.out = out.resolve()  # LF configs name absolute paths: a run can be repeated from anywhere
        self.data = self.out / "data"
        self.results_path = self.out / "results.json"
        self.results: list[dict] = json.loads(self.results_path.read_text()) if self.results_path.is_file() else []
        self.base: Path | None = None
        self.warm: dict[str, Path] = {}
        self.lock = threading.Lock()

    def model_for(self, dataset: str) -> Path:
        """The label-free warm start of ``dataset`` (built once, before any parallel run)."""
        if dataset not in self.warm:
            if self.base is None:
                from llamafactory_attok.tiny import build_tiny_model

                self.base = build_tiny_model(self.out / "tiny_qwen2_vl", "qwen2_vl")
            name = build_data(self.data, dataset)
            self.warm[dataset] = warm_start(self.base, self.data, name, self.out / "warm" / dataset)
        return self.warm[dataset]

    def record(self, entry: dict) -> None:
        with self.lock:
            self.results.append(entry)
            tmp = self.results_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, indent=1))
            tmp.replace(self.results_path)
        print(json.dumps({k: v for k, v in entry.items() if k not in ("changed", "curve")}, default=str)[:400],
              flush=True)

    def done(self, **key) -> bool:
        with self.lock:
            return any(all(r.get(k) == v for k, v in key.items()) for r in self.results)

    def arm_run(self, part: str, dataset: str, arm: str, seed: int, *, balanced: bool = False, val: bool = False,
                gen: bool = True, curves: bool = False, **overrides) -> None:
        key = {"part": part, "dataset": dataset, "arm": arm, "seed": seed, **overrides}
        if self.done(**key, **RECIPES[dataset], image_size=IMAGE_SIZE, batch=BATCH):
            return
        name = data_name(dataset, balanced)  # built in the preparation phase, before any run
        model = self.warm[dataset]
        suffix = "".join(f"_{k.removeprefix('attok_')}{v}" for k, v in overrides.items())
        run = self.out / "runs" / part / f"{name}_{arm.strip('+')}{suffix}_s{seed}"
        recipe = RECIPES[dataset]
        seconds = train(model, self.data, run, name, arm, seed, recipe["lr"], epochs=recipe["epochs"],
                        curves=curves, **overrides)
        entry = {**key, **recipe, "image_size": IMAGE_SIZE, "batch": BATCH, "train_seconds": round(seconds, 1),
                 "test": {"one_forward": one_forward(run, self.data, name, arm, "test")},
                 "changed": changed_elements(model, run)}
        if gen:
            entry["test"]["generative"] = generative(run, self.data, name, arm)
        if val:
            entry["val"] = {"one_forward": one_forward(run, self.data, name, arm, "val")}
        if curves:
            entry["curve"] = curve(run, self.data, name, arm)
        self.record(entry)

    def warm_baseline(self, dataset: str) -> None:
        """The warm-started model before any image training: its val accuracy (label-free: near chance)."""
        model = self.model_for(dataset)  # also on a rerun: every run starts from it
        if self.done(part="warm", dataset=dataset):
            return
        majority = {}
        for split in ("val", "test"):
            labels = [row["label"] for row in json.loads((self.data / f"{dataset}_open_{split}.json").read_text())]
            majority[split] = max(labels.count(label) for label in set(labels)) / len(labels)
        self.record({"part": "warm", "dataset": dataset, "arm": "warm start", "seed": 0, "majority": majority,
                     "val": {"one_forward": one_forward(model, self.data, dataset, "vanilla", "val")}})

    def run_all(self, tasks: list[dict], workers: int) -> None:
        """Independent runs, ``workers`` at a time (each in its own processes; results do not depend on the order)."""
        failures = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(self.arm_run, **task): task for task in tasks}
            for future in as_completed(futures):
                if future.exception() is not None:
                    failures.append(f"{futures[future]}: {future.exception()}")
                    print("FAILED", failures[-1], flush=True)
        if failures:
            raise RuntimeError(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))


COST = {"pneumonia_bal": 4, "pneumonia": 3, "retina": 1, "breast": 0.5}  # rough train time, biggest first


def run(ns: argparse.Namespace) -> None:
    exp = Experiment(Path(ns.out))
    exp.out.mkdir(parents=True, exist_ok=True)
    THREADS["per_process"] = 1 if ns.workers > 1 else None
    start = time.time()
    tasks: list[dict] = []
    prepared = [*ns.datasets, ns.focus, *(["pneumonia"] if "balanced" in ns.parts else [])]
    for dataset in dict.fromkeys(prepared):  # preparation, one at a time: data, warm start, its baseline
        exp.warm_baseline(dataset)
    if "main" in ns.parts:
        tasks += [{"part": "main", "dataset": d, "arm": a, "seed": s, "curves": s == ns.seeds[0]}
                  for d in ns.datasets for s in ns.seeds for a in ("vanilla", "attok")]
    if "ablation" in ns.parts:
        tasks += [{"part": "ablation", "dataset": ns.focus, "arm": a, "seed": s}
                  for s in ns.seeds for a in ("tokens", "+ACC", "+ACM")]
    if "balanced" in ns.parts:
        build_data(exp.data, "pneumonia", balanced=True)
        tasks += [{"part": "balanced", "dataset": "pneumonia", "arm": a, "seed": s, "balanced": True}
                  for s in ns.seeds for a in ("vanilla", "attok")]
    if "grid" in ns.parts:
        tasks += [{"part": "grid", "dataset": ns.focus, "arm": "attok", "seed": ns.seeds[0], "val": True,
                   "gen": False, "attok_acc_gamma": g} for g in GAMMAS]
        tasks += [{"part": "grid", "dataset": ns.focus, "arm": "attok", "seed": ns.seeds[0], "val": True,
                   "gen": False, "attok_acm_weight": w} for w in LAMBDAS if w != 1.0]  # λ=1: the γ=0.1 point
    tasks.sort(key=lambda t: -COST["pneumonia_bal" if t.get("balanced") else t["dataset"]])
    try:
        exp.run_all(tasks, ns.workers)
    finally:  # what finished is tabulated even when a run failed
        from bench.science_report import report

        (exp.out / "summary.md").write_text(report(exp.results))
        curves = {f"{r['dataset']}/{r['arm']}": r["curve"] for r in exp.results if "curve" in r}
        if curves:
            plot_curves(curves, exp.out / "curves.png")
    runs_wall = time.time() - start
    THREADS["per_process"] = None
    if "step_time" in ns.parts:  # alone on the machine, after every run
        for label, extra in (("tiny", []), ("wide", ["--width", "256", "--layers", "4", "--image-size", "112"])):
            result = subprocess.run([sys.executable, "-m", "bench.step_time", "--steps", "40", *extra], cwd=REPO,
                                    env=_env(), capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"bench.step_time {' '.join(extra)} failed:\n{result.stderr[-3000:]}")
            (exp.out / f"step_time_{label}.json").write_text(result.stdout)
            print(label, result.stdout.strip()[-300:], flush=True)
    wall = time.time() - start
    (exp.out / "wall_seconds.json").write_text(json.dumps({"runs": round(runs_wall), "all": round(wall),
                                                            "workers": ns.workers}) + "\n")
    (exp.out / "summary.md").write_text(report(exp.results))
    print(report(exp.results))
    print(f"wall time {wall / 60:.1f} min ({runs_wall / 60:.1f} min of training and scoring)", flush=True)


def select(ns: argparse.Namespace) -> None:
    """Learning rate and epochs per dataset, chosen on the val split with the vanilla arm (seed 1); a rerun adds
    only the (dataset, rate, epochs) points not yet in select.json. Runs go ``--workers`` at a time."""
    exp = Experiment(Path(ns.out))
    out = exp.out
    THREADS["per_process"] = 1 if ns.workers > 1 else None
    path = out / "select.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    for dataset in ns.datasets:
        exp.model_for(dataset)  # data and warm start, one at a time

    def point(dataset: str, lr: float, epochs: int) -> None:
        run = out / "runs" / f"{dataset}_vanilla_lr{lr:g}_e{epochs}"
        seconds = train(exp.warm[dataset], exp.data, run, dataset, "vanilla", 1, lr, epochs=epochs)
        metrics = one_forward(run, exp.data, dataset, "vanilla", "val")
        with exp.lock:
            rows.append({"dataset": dataset, "lr": lr, "epochs": epochs, "val_accuracy": metrics["accuracy"],
                         "val_macro_f1": metrics["macro_f1"], "train_seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
            path.write_text(json.dumps(rows, indent=1))

    todo = [(d, lr, e) for d in ns.datasets for lr in ns.rates for e in ns.epochs
            if not any((r["dataset"], r["lr"], r["epochs"]) == (d, lr, e) for r in rows)]
    with ThreadPoolExecutor(max_workers=ns.workers) as pool:
        for future in [pool.submit(point, *p) for p in todo]:
            future.result()
    for dataset in ns.datasets:
        points = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: (r["lr"], r["epochs"]))
        best = max(points, key=lambda r: (r["val_accuracy"], r["val_macro_f1"]))  # ties: the first in grid order
        tied = sum((r["val_accuracy"], r["val_macro_f1"]) == (best["val_accuracy"], best["val_macro_f1"])
                   for r in points)
        print(f"{dataset}: lr {best['lr']:g}, {best['epochs']} epochs (val accuracy {best['val_accuracy']:.3f}"
              f"{f'; {tied} points tie' if tied > 1 else ''})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="choose the learning rate per dataset on val (vanilla arm)")
    sel.add_argument("--out", default="bench_results/science_select")
    sel.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    sel.add_argument("--rates", type=float, nargs="+", default=list(SELECT_RATES))
    sel.add_argument("--epochs", type=int, nargs="+", default=list(SELECT_EPOCHS))
    sel.add_argument("--workers", type=int, default=2)
    go = sub.add_parser("run", help="the experiment")
    go.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    go.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    go.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS), help="main part")
    go.add_argument("--focus", choices=list(DATASETS), default=FOCUS, help="dataset of the ablation and grid")
    go.add_argument("--out", default="bench_results/science")
    go.add_argument("--workers", type=int, default=2, help="runs at a time, one torch thread each (default: 2)")
    ns = parser.parse_args()
    for option in ("seeds", "datasets", "parts", "rates", "epochs"):
        values = getattr(ns, option, None)
        if values is not None and len(set(values)) != len(values):
            parser.error(f"--{option}: a value given twice ({values})")
    rates, epochs = getattr(ns, "rates", [1.0]), getattr(ns, "epochs", [1])
    if ns.workers < 1 or any(v <= 0 for v in rates) or any(v < 1 for v in epochs):
        parser.error("--workers and --epochs must be ≥ 1, --rates > 0")
    (select if ns.command == "select" else run)(ns)


if __name__ == "__main__":
    main()
