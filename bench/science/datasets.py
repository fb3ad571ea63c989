"""The science experiment's datasets: MedMNIST built by `attok data classify`, or a user's `attok data classify`
build given with ``--data-dir``, imported into the experiment's own ``data`` folder (BENCHMARKS.md §4)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.science.common import ARMS, BIN, IMAGE_SIZE, REPO, SPLITS, info_entry, run_process, write_json
from bench.science.medmnist import CLASS_MAPS


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
    run_process([str(BIN / "attok"), "data", "classify", str(source), "--format", "npz", "--class-map",
              str(out.parent / f"{dataset}_classes.yaml"), "--out", str(out), "--name", dataset,
              "--image-size", str(IMAGE_SIZE), "--no-augment", "--overwrite"], out.parent / f"{dataset}_build.log")
    write_json(stamp_path, stamp)
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
            write_json(data / f"{dataset}.json", fixed)
            info[dataset] = info_entry(dataset, images=True)
    write_json(info_path, info)
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


def fingerprint(imported: Imported) -> str:
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
