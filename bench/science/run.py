"""One run of the science experiment in its own process: train, score, store every image's prediction.

``python -m bench.science.run JOB.json`` reads the job written by ``bench.science`` and writes ``<out>/run.json``
(atomically, last): the one-forward prediction of every scored image (every arm by one rule, `attok predict --mode
answer`: the class whose whole answer, as the arm's dataset writes it, is the most likely; AttTok arms also by their
attribute token, a secondary scorer), the generative prediction of every test
image (LF ``do_predict``, greedy, with the training positions, parsed by `attok eval classify`'s rules; −1 =
unparseable), and the parameter elements that changed against the warm model, per group.

Everything runs in this one process, single-threaded (``OMP_NUM_THREADS=1``, set by the parent) with a fixed
``PYTHONHASHSEED``: training is LF's ``run_exp`` in process, the one-forward scoring `attok predict`'s
``run_predict``, the generative scoring LF's ``run_exp`` again with ``do_predict``.

The **control arm** (``class_rows``) is vanilla LF plus trainable embedding and head rows for K existing tokens of
the class names (``bench.science.control_rows`` picks them): the same element count as AttTok's K attribute rows. It
is built from public parts only — a ``TrainerCallback`` given to ``run_exp`` wraps the embedding and the head in PEFT
``TrainableTokens`` layers when the trainer is made (before its optimiser), and merges them back into plain weights
when training ends, before LF saves the model. Every other row stays bit-identical (counted in ``changed``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback


class ClassRowsCallback(TrainerCallback):
    """Trainable embedding / head rows ``token_ids`` on an otherwise frozen embedding and head (PEFT
    TrainableTokens)."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = list(token_ids)
        self.model = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        from peft import TrainableTokensConfig, inject_adapter_in_model

        config = TrainableTokensConfig(target_modules=["embed_tokens", "lm_head"], token_indices=self.token_ids)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}  # LF's freeze-tuning choice
        inject_adapter_in_model(config, model, adapter_name="default")  # freezes every non-adapter parameter
        for name, param in model.named_parameters():
            if name in trainable:
                param.requires_grad_(True)
        wrapped = [m for m in model.modules() if type(m).__name__ == "TrainableTokensLayer"]
        if len(wrapped) != 2:
            raise RuntimeError(f"class_rows: expected the embedding and the head wrapped, got {len(wrapped)} layers")
        now = {name for name, p in model.named_parameters() if p.requires_grad}
        deltas = {name for name in now if "trainable_tokens_delta" in name}
        if now - deltas != trainable or len(deltas) != 2:
            raise RuntimeError(f"class_rows: trainable parameters are not LF's plus the two row deltas: lost "
                               f"{sorted(trainable - now)[:3]}, added {sorted(now - trainable - deltas)[:3]}")
        self.model = model

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Merge the trained rows into plain weights and put the plain modules back (LF saves a plain model)."""
        for name, module in list(self.model.named_modules()):
            if type(module).__name__ != "TrainableTokensLayer":
                continue
            module.merge()
            parent = self.model.get_submodule(name.rpartition(".")[0]) if "." in name else self.model
            setattr(parent, name.rpartition(".")[2], module.get_base_layer())


def lf_common(data_dir: str, model: str, out: Path, seed: int) -> dict:
    """The LF arguments every LF call of the experiment shares (warm start, arm training, generation)."""
    return {"model_name_or_path": model, "stage": "sft", "dataset_dir": data_dir, "template": "qwen2_vl",
            "cutoff_len": 256, "overwrite_cache": True, "preprocessing_num_workers": 1,
            "dataloader_num_workers": 0, "output_dir": str(out), "overwrite_output_dir": True, "seed": seed,
            "data_seed": seed, "report_to": "none", "plot_loss": False, "bf16": False, "disable_tqdm": True}


def train(job: dict, out: Path) -> float:
    """Every LLM layer trainable; embed / head / tower / merger frozen (AttTok and the control add their K rows)."""
    from llamafactory.train.tuner import run_exp

    attok = job["attok"]
    layers = json.loads((Path(job["model"]) / "config.json").read_text())["text_config"]["num_hidden_layers"]
    args = {**lf_common(job["data_dir"], job["model"], out, job["seed"]), "do_train": True,
            "finetuning_type": "freeze", "freeze_trainable_layers": layers, "freeze_trainable_modules": "all",
            "freeze_vision_tower": True, "freeze_multi_modal_projector": True, "dataset": job["datasets"]["train"],
            "per_device_train_batch_size": job["batch"], "learning_rate": job["lr"], "weight_decay": 1e-4,
            "num_train_epochs": job["epochs"], "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
            "logging_steps": 5, "save_strategy": "no"}
    if attok is not None:
        args.update({"attok": True, "attok_vocab": job["vocab"], **attok})
    callbacks: list[TrainerCallback] | None = None
    if job.get("matched"):
        from bench.science.control import MatchedControlCallback

        callbacks = [MatchedControlCallback(job["control_rows"], job["gamma"], job["seed"])]
    elif job.get("control_rows"):
        callbacks = [ClassRowsCallback(job["control_rows"])]
    start = time.time()
    run_exp(args, callbacks=callbacks)
    return time.time() - start


def one_forward(job: dict, run: Path, split: str, mode: str = "answer") -> dict:
    """`attok predict`'s scorer: per-image predicted class index (in ``job['classes']`` order) and accuracy.

    ``answer`` (every arm, the one-forward rule of the comparisons): the probability of each class's whole answer as
    the arm's dataset writes it; ``attribute`` (AttTok arms, secondary): the attribute token's probability."""
    from llamafactory_attok.data.lf_format import read_jsonl
    from llamafactory_attok.eval import predict

    out = run / f"one_forward_{mode}_{split}.jsonl"
    load = predict.load_model_for_inference
    if job.get("matched"):  # the control's adapter is not part of the saved model: attached to the loaded one
        from bench.science.control import load_control

        def load_with_control(*args, **kwargs):
            model, tokenizer, processor = load(*args, **kwargs)
            load_control(model, run / "model")
            return model, tokenizer, processor

        predict.load_model_for_inference = load_with_control
    try:
        dataset = Path(job["data_dir"]) / f"{job['datasets'][split]}.json"
        metrics = predict.run_predict(str(run / "model"), str(dataset), str(out), mode=mode, batch_size=32,
                                      overwrite=True)
    finally:
        predict.load_model_for_inference = load
    if metrics["skipped"]:
        raise RuntimeError(f"{job['datasets'][split]}: {metrics['skipped']} samples skipped")
    rows = [row for _, row in read_jsonl(out)]
    if mode == "answer":  # answer mode names the class by its label
        predicted = [job["classes"].index(row["prediction"]) for row in rows]
    else:  # attribute mode names it by its token's keyword
        predicted = [job["keyword_class"][row["prediction"]] for row in rows]
    result = {"rule": mode, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "predicted": predicted}
    if "retrieval_accuracy" in metrics:
        result["retrieval_accuracy"] = metrics["retrieval_accuracy"]
    return result


class AttachControlCallback(TrainerCallback):
    """Generation of the ``matched`` arm: its trained control adapter attached to the model LF loaded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_init_end(self, args, state, control, model=None, **kwargs):
        from bench.science.control import load_control

        load_control(model, self.folder)


def generative(job: dict, run: Path) -> dict:
    """LF do_predict on test (greedy, 16 new tokens, training positions), each answer parsed to a class (−1: none)."""
    from llamafactory.train.tuner import run_exp

    from llamafactory_attok.eval.classification import read_predictions
    from llamafactory_attok.eval.normalize import parse_class

    out = run / "generate"
    args = {**lf_common(job["data_dir"], str(run / "model"), out, job["seed"]), "do_predict": True,
            "predict_with_generate": True, "finetuning_type": "full", "eval_dataset": job["datasets"]["test"],
            "max_new_tokens": 16, "do_sample": False, "per_device_eval_batch_size": 32, "skip_special_tokens": False,
            "attok_training_positions": True}  # both arms decode with the training positions
    run_exp(args, callbacks=[AttachControlCallback(run / "model")] if job.get("matched") else None)
    names = [[c] for c in job["classes"]]
    parsed = [parse_class(p["predict"], names) for p in read_predictions(out / "generated_predictions.jsonl")]
    predicted = [-1 if p is None else p for p in parsed]
    truth = job["truth"]["test"]
    return {"accuracy": sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth),
            "unparseable": predicted.count(-1), "predicted": predicted}


def main(job_path: str) -> None:
    from bench.science.params import changed_elements

    job = json.loads(Path(job_path).read_text())
    run = Path(job["out"])
    seconds = train(job, run / "model")
    changed = changed_elements(Path(job["model"]), run / "model")
    if not changed["LLM layers"][0]:  # every arm trains every LLM layer (freeze tuning, all layers); checked first
        raise RuntimeError(f"{run}: no LLM-layer element changed in training (too few steps for the warm-up?): "
                           f"{changed}")
    result = {"train_seconds": round(seconds, 1), "one_forward": {}, "changed": changed}
    for split in job["splits"]:
        result["one_forward"][split] = one_forward(job, run, split)
    if job["attok"] is not None:  # secondary: AttTok's own one-forward rule, the attribute token
        result["one_forward_token"] = {"test": one_forward(job, run, "test", "attribute")}
    if job["generate"]:
        result["generative"] = {"test": generative(job, run)}
    tmp = run / "run.json.partial"
    with open(tmp, "w") as handle:
        handle.write(json.dumps(result))
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(run / "run.json")


if __name__ == "__main__":
    main(sys.argv[1])
