"""The science experiment's runs and its results file (``results.json``, rewritten after every run; a rerun resumes
from it); the design is in the package docstring (BENCHMARKS.md §4)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from bench.science.common import (
    ACC_GAMMA,
    ARMS,
    BATCH,
    BIN,
    ROW_ARMS,
    VERSION,
    info_entry,
    run_process,
    write_json,
)
from bench.science.datasets import Dataset, control_rows, warm_rows


class Experiment:
    """``out/results.json`` (rewritten atomically after every run; a rerun skips what is there)."""

    def __init__(self, out: Path) -> None:
        self.out = out.resolve()
        self.data = self.out / "data"
        self.path = self.out / "results.json"
        empty = {"version": VERSION, "datasets": {}, "towers": [], "warm": [], "runs": [], "repro": []}
        self.results: dict = {**empty, **(json.loads(self.path.read_text()) if self.path.is_file() else {})}
        self.lock = threading.Lock()
        self.datasets: dict[str, Dataset] = {}

    def save(self) -> None:
        with self.lock:
            write_json(self.path, self.results)

    def add(self, kind: str, entry: dict) -> None:
        """Record ``entry``; an earlier entry of the same dataset / replicate (/ arm, seed) is replaced, not kept."""
        key = ("dataset", "replicate", "arm", "seed", "lr", "epochs")
        with self.lock:
            self.results[kind] = [e for e in self.results[kind]
                                  if any(e.get(k) != entry.get(k) for k in key)]
            self.results[kind].append(entry)
        self.save()
        hidden = ("changed", "one_forward", "generative", "pretraining_loss")
        shown = {k: v for k, v in entry.items() if k not in hidden}
        print(kind, json.dumps(shown, default=str)[:300], flush=True)

    def find(self, kind: str, **key) -> dict | None:
        with self.lock:
            return next((e for e in self.results[kind] if all(e.get(k) == v for k, v in key.items())), None)

    def fix_inclusion(self, names: list[str], replicates: list[int], seeds: list[int]) -> None:
        """Store each dataset's inclusion decision (val only) once every vanilla run of the design (replicates ×
        seeds) exists; never changed after. The runs it used are stored with it."""
        from bench.science.report import inclusion

        wanted = {(r, s) for r in replicates for s in seeds}
        with self.lock:
            stored = self.results.setdefault("inclusion", {})
            for name in names:
                have = {(r["replicate"], r["seed"]) for r in self.results["runs"]
                        if r["dataset"] == name and r["arm"] == "vanilla" and "val" in r["one_forward"]}
                if name in stored or not wanted <= have:
                    continue
                decision = inclusion(self.results, name)
                if decision is not None:
                    stored[name] = {**decision, "vanilla_runs": sorted(map(list, have))}
        self.save()

    def check_resume(self, name: str, fingerprint: str, recipe: dict) -> None:
        """Resuming refuses a dataset whose data or recipe changed (saved predictions would no longer line up with
        its images, or runs of two recipes would be pooled)."""
        saved = self.results["datasets"].get(name)
        if saved is None:
            return
        changed = [what for what, same in (("data", saved.get("sha256", fingerprint) == fingerprint),
                                           ("--lr / --epochs", saved.get("recipe") == recipe)) if not same]
        if changed:
            raise SystemExit(f"{self.path}: dataset {name!r} was run with other {' and '.join(changed)} (saved "
                             f"recipe {saved.get('recipe')}); resume with the same, or use a new --out")

    def add_dataset(self, ds: Dataset, fingerprint: str) -> None:
        """Record ``ds`` (after :meth:`check_resume`: its classes, truth and val labels follow from the data that
        the fingerprint covers)."""
        self.datasets[ds.name] = ds
        with self.lock:
            self.results["datasets"][ds.name] = {"classes": ds.classes, "truth": ds.truth, "recipe": ds.recipe,
                                                 "val_labels": ds.val_labels, "sha256": fingerprint}
        self.save()

    # -- preparation: base model, tower, warm start (per replicate) --

    def base(self, replicate: int) -> Path:
        from llamafactory_attok.tiny import build_tiny_model

        path = self.out / "replicates" / f"r{replicate}" / "base"
        with self.lock:  # one build per replicate, shared by its datasets
            if not (path / "config.json").is_file():
                build_tiny_model(path, "qwen2_vl", seed=replicate)
        return path

    def _tower(self, ds: Dataset, replicate: int, root: Path) -> dict:
        tower = root / "tower"
        run_process([sys.executable, "-m", "bench.science.tower", str(self.base(replicate)),
                  str(ds.data / f"{ds.name}_attok_train.json"), str(ds.data / f"{ds.name}_attok_val.json"),
                  str(tower), "--seed", str(replicate)], root / "tower.log")
        return json.loads((tower / "tower_pretraining.json").read_text())

    def _warm(self, ds: Dataset, replicate: int, root: Path) -> dict:
        """Label-free warm start (text only, full fine-tuning, tower frozen) of ``root/tower`` into ``root/warm``."""
        name = f"{ds.name}_warm_r{replicate}"
        rows = warm_rows(ds, replicate)
        with self.lock:
            write_json(ds.data / f"{name}.json", rows)
            info = json.loads((ds.data / "dataset_info.json").read_text())
            info[name] = info_entry(name, images=False)
            write_json(ds.data / "dataset_info.json", info)
        from bench.science.run import lf_common

        warm = root / "warm"
        args = {**lf_common(str(ds.data), str(root / "tower"), warm, replicate), "do_train": True,
                "finetuning_type": "full", "freeze_vision_tower": True, "freeze_multi_modal_projector": True,
                "dataset": name, "per_device_train_batch_size": 8, "learning_rate": 2e-3, "num_train_epochs": 1,
                "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "logging_steps": 5, "save_strategy": "no"}
        import yaml

        (root / "warm.yaml").write_text(yaml.safe_dump(args, sort_keys=False))
        start = time.time()
        run_process([str(BIN / "llamafactory-cli"), "train", str(root / "warm.yaml")], root / "warm.log",
                 HF_DATASETS_CACHE=str(root / ".datasets_cache"))
        shutil.rmtree(root / ".datasets_cache", ignore_errors=True)
        log = [json.loads(line) for line in (warm / "trainer_log.jsonl").read_text().splitlines()]
        losses = [entry["loss"] for entry in log if "loss" in entry] or [None]
        return {"seconds": round(time.time() - start, 1), "rows": len(rows), "loss_first": losses[0],
                "loss_last": losses[-1]}

    def prepare(self, ds: Dataset, replicate: int) -> Path:
        """Tower pretraining then warm start of replicate ``replicate`` on ``ds``; returns the warm model. A rerun
        reuses a finished tower and a finished warm start."""
        root = self.out / "replicates" / f"r{replicate}" / ds.name
        warm = root / "warm"
        if self.find("warm", dataset=ds.name, replicate=replicate) and (warm / "model.safetensors").is_file():
            return warm
        root.mkdir(parents=True, exist_ok=True)
        if not (self.find("towers", dataset=ds.name, replicate=replicate)
                and (root / "tower" / "model.safetensors").is_file()):
            self.add("towers", {"dataset": ds.name, "replicate": replicate, **self._tower(ds, replicate, root)})
        self.add("warm", {"dataset": ds.name, "replicate": replicate, **self._warm(ds, replicate, root)})
        return warm

    def repeat_preparation(self, ds: Dataset, replicate: int) -> None:
        """Tower and warm start of (``ds``, ``replicate``) built again from scratch; their weights must be equal."""
        key = {"dataset": ds.name, "arm": "tower + warm start", "replicate": replicate, "seed": replicate}
        if self.find("repro", **key):
            return
        first = self.out / "replicates" / f"r{replicate}" / ds.name
        again = self.out / "replicates" / f"r{replicate}" / f"{ds.name}_repro"
        shutil.rmtree(again, ignore_errors=True)
        again.mkdir(parents=True)
        self._tower(ds, replicate, again)
        self._warm(ds, replicate, again)

        def digest(path: Path) -> str:
            return hashlib.sha256(path.read_bytes()).hexdigest()

        same = {part: digest(first / part / "model.safetensors") == digest(again / part / "model.safetensors")
                for part in ("tower", "warm")}
        self.add("repro", {**key, "identical": all(same.values()),
                           "differing_images": {"tower weights": "same" if same["tower"] else "differ",
                                                "warm-start weights": "same" if same["warm"] else "differ"}})

    # -- one arm run --

    def run(self, ds: Dataset, arm: str, replicate: int, seed: int, warm: Future | Path, part: str,
            repro: bool = False) -> None:
        key = {"dataset": ds.name, "arm": arm, "replicate": replicate, "seed": seed, **ds.recipe}
        if self.find("repro" if repro else "runs", **key):
            return
        first = self.find("runs", **key) if repro else None
        if repro and first is None:
            raise RuntimeError(f"repro: no first run of {key} to compare with (run the main part first)")
        model = warm.result() if isinstance(warm, Future) else warm
        run = self.out / "runs" / ds.name / f"{arm.strip('+')}_r{replicate}_s{seed}{'_repro' if repro else ''}"
        shutil.rmtree(run, ignore_errors=True)  # the leftover of an interrupted run
        run.mkdir(parents=True)
        rows = None
        if arm in ROW_ARMS:
            from transformers import AutoTokenizer

            rows = control_rows(AutoTokenizer.from_pretrained(model), ds.classes)
        job = {"model": str(model), "data_dir": str(ds.data), "datasets": ds.datasets(arm), "attok": ARMS[arm],
               "vocab": str(ds.vocab), "control_rows": rows, "matched": arm == "matched", "gamma": ACC_GAMMA,
               "seed": seed, "batch": BATCH, **ds.recipe,
               "out": str(run), "splits": ["test", "val"] if arm == "vanilla" else ["test"], "generate": True,
               "classes": ds.classes, "keyword_class": ds.keyword_class, "truth": ds.truth}
        write_json(run.parent / f"{run.name}.job.json", job)
        run_process([sys.executable, "-m", "bench.science.run", str(run.parent / f"{run.name}.job.json")],
                 run.parent / f"{run.name}.log", HF_DATASETS_CACHE=str(run / ".datasets_cache"))
        shutil.rmtree(run / ".datasets_cache", ignore_errors=True)
        result = json.loads((run / "run.json").read_text())
        entry = {**key, "part": part, "control_rows": rows, **result}
        if not repro:
            self.add("runs", entry)
            return
        differing = {scorer: sum(a != b for a, b in zip(first[scorer]["test"]["predicted"],
                                                        entry[scorer]["test"]["predicted"], strict=True))
                     for scorer in ("one_forward", "generative")}
        self.add("repro", {**key, "identical": not any(differing.values()), "differing_images": differing,
                           "train_seconds": entry["train_seconds"]})


