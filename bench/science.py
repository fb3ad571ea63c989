"""Does AttTok help, or do its confounds? The CPU-scale experiment, v2 (BENCHMARKS.md §4).

v1 (`bench_results/science/`, superseded) decoded with the wrong positions, had no control for AttTok's K trainable
rows, warm-started only one answer form, used seeds of one base model as replicates, kept no per-image predictions and
ran a random frozen tower. v2, the same for every arm of a dataset:

- **Replicates.** ``--replicates`` (default 1 2 3) independent initialisations: replicate r has its own tiny
  Qwen2-VL (random weights, seed r), its own tower pretraining and its own warm start; each is trained with
  ``--seeds`` (default 1 2: data order and new-parameter init).
- **A tower that sees** (`bench/science_tower.py`): label-free SimCLR on the dataset's training images (tower +
  merger, 300 steps), then frozen in every arm; the linear probe of its features on val is reported with the random
  tower's and the majority rate.
- **Label-free warm start** (text only, full fine-tuning, 1 epoch): every training question answered by a uniformly
  random class name, half of them written bare (the vanilla answer, ``pneumonia``) and half with a leading space (the
  text an AttTok answer has after its attribute token, `` pneumonia``), so the arms' first text tokens are all trained.
- **Arms** (`finetuning_type: freeze`, every LLM layer trainable, embed / head / tower / merger frozen):
  ``vanilla``; ``class_rows`` — vanilla plus trainable embed and head rows of K class-name tokens (the token at which
  each class name departs from the others: the rows greedy decoding decides on), the same element count as AttTok's
  K attribute rows (`bench/science_run.py`); ``tokens`` (attribute tokens alone); ``+ACC``; ``+ACM``; ``attok``
  (tokens + ACC + ACM). ``changed`` counts, per group, the elements that moved against the warm model.
- **Recipe**: AdamW, wd 1e-4, cosine, 10 % warm-up, batch 32, images 112²; learning rate and epochs per dataset from
  ``RECIPES`` (chosen in v1 on val with the vanilla arm; not re-chosen for v2), ``--lr`` / ``--epochs`` with
  ``--data-dir``.
- **Scoring** of every test image, stored per image: one forward (AttTok arms: attribute-token probabilities;
  vanilla arms: class-name likelihood) and generative (LF ``do_predict``, greedy, the training positions for every arm,
  parsed by `attok eval classify`'s rules; unparseable = wrong). The vanilla arm also scores val (the inclusion rule).
- **Inclusion rule** (`bench/science_stats.py`, fixed before any test number was read): a dataset is in the headline
  when vanilla's mean val accuracy beats the val majority rate by ≥ 3 points.
- **Statistics** (`bench/science_stats.py`): per (replicate, seed) McNemar; over replicates a paired t-test; over
  images a bootstrap 95 % interval.
- **Reproducibility** (``repro`` part): replicate 1, seed 1 of every main arm on the focus dataset is trained again
  from scratch; its per-image predictions must equal the first run's (each run is one process, one thread,
  ``PYTHONHASHSEED=0``).

Parts: ``main`` (vanilla, class_rows, attok on every dataset), ``ablation`` (tokens, +ACC, +ACM on ``--focus``,
``--ablation-seeds``, default: the same as ``--seeds``), ``repro``. Runs go ``--workers`` at a time, one torch
thread each; a rerun skips what is in results.json.

    python -m bench.science run [--parts main ablation repro] [--datasets pneumonia breast retina] [--out DIR]
    python -m bench.science run --data-dir DIR --name NAME [--lr 5e-4 --epochs 3] --out OUT   # `attok data classify`
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.medmnist import CLASS_MAPS, COMPONENTS
from bench.science_stats import INCLUSION_MARGIN, INCLUSION_RULE

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RECIPES = {"pneumonia": {"lr": 5e-4, "epochs": 3}, "breast": {"lr": 5e-4, "epochs": 3},
           "retina": {"lr": 5e-4, "epochs": 10}}
BATCH, IMAGE_SIZE = 32, 112
ARMS: dict[str, dict | None] = {"vanilla": None, "class_rows": None, "tokens": COMPONENTS["tokens"],
                                "+ACC": COMPONENTS["+ACC"], "+ACM": COMPONENTS["+ACM"], "attok": COMPONENTS["+both"]}
MAIN_ARMS, ABLATION_ARMS = ("vanilla", "class_rows", "attok"), ("tokens", "+ACC", "+ACM")
PARTS = ("main", "ablation", "repro")
SPLITS = ("train", "val", "test")
FOCUS = "pneumonia"
COST = {"pneumonia": 3, "retina": 2.5, "breast": 0.5}  # rough run time, biggest first
def _env(**extra: str) -> dict[str, str]:
    # One thread per run, always: the reduction order, hence the result, never depends on --workers (v1 ran one
    # thread with --workers 2 but two with --workers 1, so a run repeated alone could not match).
    env = dict(os.environ, HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1", TOKENIZERS_PARALLELISM="false",
               PYTHONHASHSEED="0", OMP_NUM_THREADS="1", **extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


def _info_entry(dataset: str, images: bool) -> dict:
    """A sharegpt entry of ``dataset_info.json`` (``images``: the rows carry an image column)."""
    return {"file_name": f"{dataset}.json", "formatting": "sharegpt",
            "columns": {"messages": "messages", **({"images": "images"} if images else {})},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}


def _process(cmd: list[str], log: Path, **env: str) -> None:
    with open(log, "w") as handle:
        result = subprocess.run(cmd, env=_env(**env), stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed ({result.returncode}): see {log}")


# ---- data ---------------------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """One dataset as the experiment uses it (files under the experiment's own ``data`` folder)."""

    name: str
    data: Path
    vocab: Path
    classes: list[str]
    keyword_class: dict[str, int]  # attribute keyword -> class index (how `attok predict` names a class)
    truth: dict[str, list[int]] = field(default_factory=dict)
    val_labels: list[str] = field(default_factory=list)
    recipe: dict = field(default_factory=dict)

    def datasets(self, arm: str) -> dict[str, str]:
        form = "vanilla" if ARMS[arm] is None else "attok"
        return {split: f"{self.name}_{form}_{split}" for split in SPLITS}


def build_medmnist(dataset: str, out: Path) -> Path:
    """`attok data classify` on the full official MedMNIST split (no offline balancing) into ``out``; reused when
    made from the same source and class map."""
    folder, class_map = CLASS_MAPS[dataset]
    source = REPO / "data" / "sources" / folder / f"{folder}.npz"
    stamp = {"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "class_map": class_map,
             "image_size": IMAGE_SIZE}
    stamp_path = out / "built_from.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out.parent / f"{dataset}_classes.yaml").write_text(class_map)
    _process([str(BIN / "attok"), "data", "classify", str(source), "--format", "npz", "--class-map",
              str(out.parent / f"{dataset}_classes.yaml"), "--out", str(out), "--name", dataset,
              "--image-size", str(IMAGE_SIZE), "--no-augment", "--overwrite"], out.parent / f"{dataset}_build.log")
    _write_json(stamp_path, stamp)
    return out


def strip_attribute_token(answer: str, token: str, where: str) -> str:
    """The vanilla answer of an AttTok row: its text after the leading attribute token."""
    if not answer.startswith(token):
        raise ValueError(f"{where}: the answer {answer!r} does not start with its attribute token {token}")
    return answer[len(token):].strip()


@dataclass
class Imported:
    """A dataset read and checked, nothing written yet (:func:`read_dataset`)."""

    source: Path
    name: str
    classes: list[str]
    keyword_class: dict[str, int]
    rows: dict[str, dict[str, list[dict]]]  # form -> split -> rows
    resize: list[tuple[Path, Path]]  # (image, its 112² copy under the experiment's data folder)
    vocab: dict[str, str]  # attribute token -> keyword


def read_dataset(source: Path, name: str) -> Imported:
    """Read and check a dataset built by `attok data classify` (``{name}_open_{train,val,test}.json`` and
    ``{name}_vocab.yaml`` in ``source``; the user's folder is only read); every error names the file and sample.
    The vanilla rows are the AttTok rows with the answer's leading attribute token removed. Images that are not
    112² (the experiment's size: 16 visual tokens) get a resized copy in the experiment's own folder."""
    from PIL import Image

    from llamafactory_attok.vocab import load_vocab

    needed = [source / f"{name}_open_{split}.json" for split in SPLITS] + [source / f"{name}_vocab.yaml"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise SystemExit(f"--data-dir {source} --name {name}: missing {', '.join(missing)} (build the dataset with "
                         f"`attok data classify … --out {source} --name {name}`; it writes train, val and test)")
    vocab = load_vocab(source / f"{name}_vocab.yaml")
    keyword_of = vocab.as_dict()
    rows: dict[str, dict[str, list[dict]]] = {"attok": {}, "vanilla": {}}
    resize: list[tuple[Path, Path]] = []
    tokens: dict[str, list[str]] = {}  # split -> each row's attribute token
    for split in SPLITS:
        path = source / f"{name}_open_{split}.json"
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"{path}: not a JSON list of samples ({error})") from error
        if not isinstance(loaded, list) or not loaded:
            raise SystemExit(f"{path}: needs a non-empty JSON list of samples")
        rows["attok"][split], rows["vanilla"][split], tokens[split] = [], [], []
        for i, row in enumerate(loaded):
            where = f"{path}: sample {i}"
            try:
                answer = row["messages"][1]["content"]
                image = Path(row["images"][0])
                if not isinstance(row["label"], str) or len(row["images"]) != 1 or not isinstance(answer, str):
                    raise TypeError
            except (KeyError, IndexError, TypeError) as error:
                raise SystemExit(f"{where}: needs a user and an assistant message, one image and a string `label` "
                                 "(as `attok data classify` writes)") from error
            image = image if image.is_absolute() else (source / image).resolve()
            if not image.is_file():
                raise SystemExit(f"{where}: image {image} not found")
            with Image.open(image) as opened:
                try:
                    opened.load()  # decoded now, not half-way through writing the experiment's copy
                except OSError as error:
                    raise SystemExit(f"{where}: image {image} cannot be read ({error})") from error
                if opened.size != (IMAGE_SIZE, IMAGE_SIZE):
                    resize.append((image, Path("images") / split / f"{i:06d}.png"))
                    image = resize[-1][1]
            token = next((t for t in vocab.tokens if answer.startswith(t)), None)
            if token is None:
                raise SystemExit(f"{where}: the answer {answer!r} starts with no token of {name}_vocab.yaml")
            text = strip_attribute_token(answer, token, where)
            tokens[split].append(token)
            attok_row = {**row, "images": [str(image)]}
            rows["attok"][split].append(attok_row)
            rows["vanilla"][split].append({**attok_row, "messages": [row["messages"][0], {
                "role": "assistant", "content": text}]})
    classes = sorted({row["label"] for row in rows["attok"]["train"]})
    keyword_class: dict[str, int] = {}
    for split in SPLITS:
        labels = {row["label"] for row in rows["attok"][split]}
        if labels != set(classes):  # the vanilla likelihood scorer ranks the classes seen in the split it scores
            raise SystemExit(f"{source / f'{name}_open_{split}.json'}: classes {sorted(labels)} differ from the "
                             f"training split's {classes}; every split needs every class")
        for row, token in zip(rows["attok"][split], tokens[split], strict=True):
            if keyword_class.setdefault(keyword_of[token], classes.index(row["label"])) != classes.index(row["label"]):
                raise SystemExit(f"{source / f'{name}_open_{split}.json'}: token {token} is used for two labels")
    return Imported(source, name, classes, keyword_class, rows, resize, keyword_of)


def write_dataset(imported: Imported, data: Path) -> Dataset:
    """Write a checked dataset into the experiment's ``data`` folder (both answer forms, resized copies)."""
    from PIL import Image

    name = imported.name
    data.mkdir(parents=True, exist_ok=True)
    if imported.resize:  # said, not done silently: the runs see these copies, not the user's images
        print(f"{name}: {len(imported.resize)} images are not {IMAGE_SIZE}² and are resized (bicubic) into "
              f"{data / f'{name}_images'}", flush=True)
    for image, copy in imported.resize:
        target = data / f"{name}_{copy}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(image) as opened:
            opened.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC).save(target)
    info_path = data / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    for form, splits in imported.rows.items():
        for split, rows in splits.items():
            fixed = [{**r, "images": [r["images"][0] if Path(r["images"][0]).is_absolute()
                                      else str(data / f"{name}_{r['images'][0]}")]} for r in rows]
            dataset = f"{name}_{form}_{split}"
            _write_json(data / f"{dataset}.json", fixed)
            info[dataset] = _info_entry(dataset, images=True)
    _write_json(info_path, info)
    shutil.copyfile(imported.source / f"{name}_vocab.yaml", data / f"{name}_vocab.yaml")
    classes, rows = imported.classes, imported.rows["attok"]
    return Dataset(name=name, data=data, vocab=data / f"{name}_vocab.yaml", classes=classes,
                   keyword_class=imported.keyword_class,
                   truth={s: [classes.index(r["label"]) for r in rows[s]] for s in ("val", "test")},
                   val_labels=[r["label"] for r in rows["val"]])


def import_dataset(source: Path, name: str, data: Path) -> Dataset:
    """:func:`read_dataset` then :func:`write_dataset`."""
    return write_dataset(read_dataset(source, name), data)


def warm_rows(ds: Dataset, seed: int) -> list[dict]:
    """Label-free warm-start text: each training question (image removed) answered by a random class name, half bare
    (the vanilla answer) and half after a space (the text an AttTok answer has after its attribute token)."""
    rows = json.loads((ds.data / f"{ds.name}_vanilla_train.json").read_text())
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": row["messages"][0]["content"].replace("<image>", "")},
                          {"role": "assistant", "content": rng.choice(("", " ")) + rng.choice(ds.classes)}]}
            for row in rows]


def control_rows(tokenizer, classes: list[str]) -> list[int]:
    """K distinct token ids, one per class: the token at which the class name's tokenisation (as a vanilla answer
    writes it) departs from every other class's — the row greedy decoding decides the class on; where two classes
    would share it, the next token of the later class (so that there are exactly K rows, like AttTok's)."""
    encoded = [tokenizer.encode(c, add_special_tokens=False) for c in classes]
    chosen: list[int] = []
    for i, ids in enumerate(encoded):
        others = [e for j, e in enumerate(encoded) if j != i]
        depart = next((n for n in range(len(ids)) if all(e[:n + 1] != ids[:n + 1] for e in others)), len(ids) - 1)
        candidates = [t for t in ids[depart:] + ids[:depart] if t not in chosen]
        if not candidates:
            raise ValueError(f"class {classes[i]!r}: no token left for a distinct control row")
        chosen.append(candidates[0])
    return chosen


# ---- the experiment -----------------------------------------------------------------------------------------------

def check_out(out: Path, overwrite: bool, data_dir: Path | None) -> None:
    """``--out`` is a new or empty folder, or an earlier output of this command (resumed); never the dataset's folder
    nor a folder around it; anything else needs ``--overwrite`` (which removes it first)."""
    from llamafactory_attok.safe_paths import within

    if data_dir is not None and (within(out, data_dir) or within(data_dir, out)):
        raise SystemExit(f"--out {out}: lies inside --data-dir {data_dir} or holds it; the dataset's folder is only "
                         "read — choose another --out")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    results = out / "results.json"
    ours = out.is_dir() and results.is_file() and json.loads(results.read_text()).get("version") == 2
    if overwrite:
        if not ours:
            raise SystemExit(f"--out {out}: --overwrite removes only an earlier output of this command "
                             "(a folder with a version-2 results.json); choose a new --out")
        shutil.rmtree(out)
    elif not ours:
        raise SystemExit(f"--out {out}: exists and is not an output of `bench.science run` (no version-2 "
                         "results.json); choose a new or empty folder")


def _fingerprint(imported: Imported) -> str:
    """SHA-256 of what the runs see: per split and sample its messages, label and image bytes, and the vocabulary's
    tokens and keywords (not where the files lie: a clone elsewhere resumes the same experiment)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(imported.vocab, sort_keys=True).encode())
    resized = {str(copy): image for image, copy in imported.resize}
    for split in SPLITS:
        for row in imported.rows["attok"][split]:
            digest.update(json.dumps([split, row["messages"], row["label"]]).encode())
            digest.update(Path(resized.get(row["images"][0], row["images"][0])).read_bytes())
    return digest.hexdigest()


class Experiment:
    """``out/results.json`` (rewritten atomically after every run; a rerun skips what is there)."""

    def __init__(self, out: Path) -> None:
        self.out = out.resolve()
        self.data = self.out / "data"
        self.path = self.out / "results.json"
        empty = {"version": 2, "datasets": {}, "towers": [], "warm": [], "runs": [], "repro": []}
        self.results: dict = {**empty, **(json.loads(self.path.read_text()) if self.path.is_file() else {})}
        self.lock = threading.Lock()
        self.datasets: dict[str, Dataset] = {}

    def save(self) -> None:
        with self.lock:
            _write_json(self.path, self.results)

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
        from bench.science_report import inclusion

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
        _process([sys.executable, "-m", "bench.science_tower", str(self.base(replicate)),
                  str(ds.data / f"{ds.name}_attok_train.json"), str(ds.data / f"{ds.name}_attok_val.json"),
                  str(tower), "--seed", str(replicate)], root / "tower.log")
        return json.loads((tower / "tower_pretraining.json").read_text())

    def _warm(self, ds: Dataset, replicate: int, root: Path) -> dict:
        """Label-free warm start (text only, full fine-tuning, tower frozen) of ``root/tower`` into ``root/warm``."""
        name = f"{ds.name}_warm_r{replicate}"
        rows = warm_rows(ds, replicate)
        with self.lock:
            _write_json(ds.data / f"{name}.json", rows)
            info = json.loads((ds.data / "dataset_info.json").read_text())
            info[name] = _info_entry(name, images=False)
            _write_json(ds.data / "dataset_info.json", info)
        from bench.science_run import lf_common

        warm = root / "warm"
        args = {**lf_common(str(ds.data), str(root / "tower"), warm, replicate), "do_train": True,
                "finetuning_type": "full", "freeze_vision_tower": True, "freeze_multi_modal_projector": True,
                "dataset": name, "per_device_train_batch_size": 8, "learning_rate": 2e-3, "num_train_epochs": 1,
                "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "logging_steps": 5, "save_strategy": "no"}
        import yaml

        (root / "warm.yaml").write_text(yaml.safe_dump(args, sort_keys=False))
        start = time.time()
        _process([str(BIN / "llamafactory-cli"), "train", str(root / "warm.yaml")], root / "warm.log",
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
        if arm == "class_rows":
            from transformers import AutoTokenizer

            rows = control_rows(AutoTokenizer.from_pretrained(model), ds.classes)
        job = {"model": str(model), "data_dir": str(ds.data), "datasets": ds.datasets(arm), "attok": ARMS[arm],
               "vocab": str(ds.vocab), "control_rows": rows, "seed": seed, "batch": BATCH, **ds.recipe,
               "out": str(run), "splits": ["test", "val"] if arm == "vanilla" else ["test"], "generate": True,
               "classes": ds.classes, "keyword_class": ds.keyword_class, "truth": ds.truth}
        _write_json(run.parent / f"{run.name}.job.json", job)
        _process([sys.executable, "-m", "bench.science_run", str(run.parent / f"{run.name}.job.json")],
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


def run_experiment(ns: argparse.Namespace) -> None:
    imported = {ns.name: read_dataset(Path(ns.data_dir).resolve(), ns.name)} if ns.data_dir else {}  # before --out
    check_out(Path(ns.out), ns.overwrite, Path(ns.data_dir) if ns.data_dir else None)
    exp = Experiment(Path(ns.out))
    source = f"--data-dir {Path(ns.data_dir).resolve()} --name {ns.name}" if ns.data_dir else "MedMNIST"
    if exp.results.get("source", source) != source:
        raise SystemExit(f"--out {exp.out}: holds the experiment on {exp.results['source']}, not {source}; "
                         "use another --out")
    exp.results["source"] = source
    exp.out.mkdir(parents=True, exist_ok=True)
    exp.save()  # from here on --out is recognisably this command's output (resumable, --overwrite-able)
    start = time.time()
    if ns.data_dir:
        recipes = {ns.name: {"lr": ns.lr or 5e-4, "epochs": ns.epochs or 3}}
        focus = ns.name
    else:
        names = dict.fromkeys([*ns.datasets, *([ns.focus] if {"ablation", "repro"} & set(ns.parts) else [])])
        imported = {name: read_dataset(build_medmnist(name, exp.out / "sources" / name), name) for name in names}
        recipes = {name: {"lr": ns.lr or RECIPES[name]["lr"], "epochs": ns.epochs or RECIPES[name]["epochs"]}
                   for name in names}
        focus = ns.focus
    with exp.lock:
        exp.results.setdefault("protocol", {"inclusion_rule": INCLUSION_RULE, "inclusion_margin": INCLUSION_MARGIN})
    datasets = []
    for name, read in imported.items():
        fingerprint = _fingerprint(read)
        exp.check_resume(name, fingerprint, recipes[name])  # before the import rewrites the experiment's copy
        ds = write_dataset(read, exp.data)
        ds.recipe = recipes[name]
        exp.add_dataset(ds, fingerprint)
        datasets.append(ds)
    main_names = [ds.name for ds in datasets if ns.data_dir or ds.name in ns.datasets]
    order = sorted(datasets, key=lambda d: -COST.get(d.name, 1))
    first = ns.replicates[0]
    tasks = {ds.name: [] for ds in order}
    for ds in order:
        if "main" in ns.parts and ds.name in main_names:
            tasks[ds.name] += [(arm, r, s, "main") for r in ns.replicates for s in ns.seeds for arm in MAIN_ARMS]
        if "ablation" in ns.parts and ds.name == focus:
            tasks[ds.name] += [(arm, r, s, "ablation") for r in ns.replicates for s in ns.ablation_seeds
                               for arm in ABLATION_ARMS]
    repro_arms = [arm for arm in MAIN_ARMS if "repro" in ns.parts and focus in main_names
                  and not exp.find("repro", dataset=focus, arm=arm, replicate=first, seed=ns.seeds[0],
                                   **recipes[focus])]
    if repro_arms and "main" not in ns.parts:
        missing = [arm for arm in repro_arms if not exp.find("runs", dataset=focus, arm=arm, replicate=first,
                                                             seed=ns.seeds[0], **recipes[focus])]
        if missing:
            raise SystemExit(f"--parts repro: no first run of {missing} (replicate {first}, seed {ns.seeds[0]}) on "
                             f"{focus} in {exp.path} to repeat; run the main part first")

    def todo(ds: Dataset, replicate: int) -> bool:
        """Does (ds, replicate) still need its warm model? (A resumed, finished experiment retrains nothing.)"""
        runs = [t for t in tasks[ds.name] if t[1] == replicate and not exp.find(
            "runs", dataset=ds.name, arm=t[0], replicate=replicate, seed=t[2], **ds.recipe)]
        repeat = "repro" in ns.parts and ds.name == focus and replicate == first and focus in main_names and (
            bool(repro_arms) or not exp.find("repro", dataset=focus, arm="tower + warm start", replicate=first))
        return bool(runs) or repeat

    with ThreadPoolExecutor(max_workers=ns.workers) as pool:
        warm = {(ds.name, r): pool.submit(exp.prepare, ds, r) for ds in order for r in ns.replicates if todo(ds, r)}
        futures = [pool.submit(exp.run, ds, arm, r, s, warm[(ds.name, r)], part)
                   for ds in order for arm, r, s, part in tasks[ds.name] if (ds.name, r) in warm]
        failures = [f"{f.exception()}" for f in [*warm.values(), *futures] if f.exception() is not None]
        if not failures:  # from val only, stored before the report reads any test number
            exp.fix_inclusion(main_names, ns.replicates, ns.seeds)
        if "repro" in ns.parts and focus in main_names and not failures:  # after the runs it repeats
            ds = exp.datasets[focus]
            repro = [pool.submit(exp.run, ds, arm, first, ns.seeds[0], warm[(focus, first)], "main", True)
                     for arm in repro_arms]
            if not exp.find("repro", dataset=focus, arm="tower + warm start", replicate=first):
                repro.append(pool.submit(exp.repeat_preparation, ds, first))
            failures += [f"{f.exception()}" for f in repro if f.exception() is not None]
        failures = list(dict.fromkeys(failures))  # one failed warm start fails every run that needs it
    wall = round(time.time() - start)
    if warm:  # something was trained (a resumed, finished experiment adds no wall-time line)
        with exp.lock:
            exp.results.setdefault("wall_seconds", []).append({"parts": ns.parts, "seconds": wall,
                                                               "workers": ns.workers})
    exp.save()
    from bench.science_report import report

    (exp.out / "summary.md").write_text(report(exp.results))
    print(report(exp.results))
    print(f"wall time {wall / 60:.1f} min", flush=True)
    if failures:
        raise SystemExit(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="the experiment")
    go.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    go.add_argument("--datasets", nargs="+", choices=list(CLASS_MAPS),
                    help=f"MedMNIST datasets of the main part (default: {' '.join(CLASS_MAPS)})")
    go.add_argument("--focus", help=f"dataset of the ablation and the reproducibility check (default: {FOCUS})")
    go.add_argument("--data-dir", help="a dataset built by `attok data classify` (instead of the MedMNIST ones)")
    go.add_argument("--name", help="its --name (with --data-dir)")
    go.add_argument("--lr", type=float, help="learning rate (default: RECIPES, or 5e-4 with --data-dir)")
    go.add_argument("--epochs", type=int, help="epochs (default: RECIPES, or 3 with --data-dir)")
    go.add_argument("--replicates", type=int, nargs="+", default=[1, 2, 3])
    go.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    go.add_argument("--ablation-seeds", type=int, nargs="+", help="seeds of the ablation (default: --seeds)")
    go.add_argument("--out", help="results folder (default: bench_results/science_v2; required with --data-dir)")
    go.add_argument("--workers", type=int, default=2, help="runs at a time, one torch thread each (default: 2)")
    go.add_argument("--overwrite", action="store_true", help="remove an earlier output in --out first")
    ns = parser.parse_args(argv)
    ns.ablation_seeds = ns.ablation_seeds or ns.seeds
    if not set(ns.ablation_seeds) <= set(ns.seeds):
        parser.error(f"--ablation-seeds {ns.ablation_seeds}: must be among --seeds {ns.seeds} (the ablation arms are "
                     "compared with vanilla runs of the same seeds)")
    if min(ns.replicates) < 1 or min(ns.seeds) < 0:
        parser.error("--replicates must be ≥ 1 and --seeds ≥ 0")
    if ns.data_dir and (ns.datasets is not None or ns.focus is not None):
        parser.error("--datasets / --focus choose MedMNIST datasets; with --data-dir the dataset is --name")
    ns.datasets = ns.datasets or list(CLASS_MAPS)
    for option in ("seeds", "datasets", "parts", "replicates", "ablation_seeds"):
        values = getattr(ns, option)
        if len(set(values)) != len(values):
            parser.error(f"--{option.replace('_', '-')}: a value given twice ({values})")
    if bool(ns.data_dir) != bool(ns.name):
        parser.error("--data-dir and --name go together")
    if ns.data_dir and ns.out is None:
        parser.error("--data-dir needs its own --out (the default one holds the MedMNIST experiment)")
    ns.out = ns.out or "bench_results/science_v2"
    if ns.data_dir:
        ns.focus = ns.name
    else:
        ns.focus = ns.focus or FOCUS
    if ns.focus not in CLASS_MAPS and not ns.data_dir:
        parser.error(f"--focus: one of {list(CLASS_MAPS)}")
    for option, bad, rule in (("--workers", ns.workers < 1, "≥ 1"),
                              ("--epochs", ns.epochs is not None and ns.epochs < 1, "≥ 1"),
                              ("--lr", ns.lr is not None and ns.lr <= 0, "> 0")):
        if bad:
            parser.error(f"{option} must be {rule}")
    run_experiment(ns)


if __name__ == "__main__":
    main()
