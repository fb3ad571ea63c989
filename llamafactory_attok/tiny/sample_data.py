"""The small real sample dataset shipped for the demo and the tests: a class-balanced slice of RetinaMNIST.

It writes PNG images (upscaled from 28×28), LLaMA-Factory sharegpt JSON with answers prefixed by the attribute
token, the attribute vocabulary YAML and the matching ``dataset_info.json`` entries. The full data builders
(``attok data …``) are a separate feature; this module only makes the fixture every other part relies on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..data.build_manifest import OWN_FILES, check_owned, manifest_name, read_manifest, record_hashes, write_manifest
from ..data.lf_format import dataset_entry, dataset_info_names, merge_dataset_info, write_atomic, write_png
from ..errors import AttTokError
from ..safe_paths import build_lock, refuse_protected_folders, refuse_same_as_input, refuse_symlinks

RETINA_CLASSES: tuple[tuple[str, str], ...] = (
    ("<|fundus_no_dr|>", "no diabetic retinopathy"),
    ("<|fundus_mild_dr|>", "mild diabetic retinopathy"),
    ("<|fundus_moderate_dr|>", "moderate diabetic retinopathy"),
    ("<|fundus_severe_dr|>", "severe diabetic retinopathy"),
    ("<|fundus_proliferative_dr|>", "proliferative diabetic retinopathy"),
)
QUESTION = "<image>Which grade of diabetic retinopathy does this fundus image show?"


def _source(name: str) -> Path:
    """A MedMNIST ``.npz`` shipped with the package (wheel: ``tiny/sources/``, put there by pyproject's
    ``force-include`` from the checkout's ``data/sources/``), else the checkout's copy (editable install)."""
    packaged = Path(__file__).resolve().parent / "sources" / name / f"{name}.npz"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "data" / "sources" / name / f"{name}.npz"


RETINA_NPZ = _source("retinamnist")


def _balanced_indices(labels, per_class: int) -> list[int]:
    picked: list[int] = []
    for cls in range(len(RETINA_CLASSES)):
        picked += [int(i) for i in (labels == cls).nonzero()[0][:per_class]]
    return sorted(picked)


def _sample(image_rel: str, label: int, with_tokens: bool) -> dict:
    token, keyword = RETINA_CLASSES[label]
    answer = f"{token} {keyword}" if with_tokens else keyword
    return {
        "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}],
        "images": [image_rel],
        "label": keyword,
    }


BUILDER = "attok sample-data"
PREFIX = "retina"  # its manifest: retina_build.json


def _retina_outputs() -> tuple[list[str], list[str]]:
    """Dataset names and paths (relative to the output folder) that :func:`build_retina_sample` writes."""
    names = [f"retina_{kind}_{split}" for split in ("train", "test") for kind in ("attok", "vanilla")]
    return names, ["retina_images", *(f"{n}.json" for n in names), "retina_vocab.yaml", manifest_name(PREFIX)]


def build_retina_sample(
    out_dir: str | os.PathLike,
    per_class_train: int = 8,
    per_class_test: int = 4,
    image_size: int = 56,
    npz_path: str | os.PathLike = RETINA_NPZ,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write ``retina_attok_{train,test}``, ``retina_vanilla_{train,test}`` and ``retina_vocab.yaml``.

    Returns the dataset names mapped to their JSON file names; ``dataset_info.json`` in ``out_dir`` is
    merged (existing entries kept). Like the ``attok data`` builders it owns what it writes through
    ``retina_build.json`` (:mod:`..data.build_manifest`): before writing anything it refuses to replace any of those
    datasets, files or images unless an earlier sample-data build wrote them, nobody edited them since (the user may
    have edited the vocabulary) and ``overwrite``; ``npz_path`` may not be one of them. Builds into one folder
    exclude each other.
    """
    for option, value in (("--per-class-train", per_class_train), ("--per-class-test", per_class_test),
                          ("--image-size", image_size)):
        if value < 1:
            raise AttTokError(f"{option} {value}: must be at least 1")
    from ..data.sources import load_npz, npz_split

    out, npz_path = Path(out_dir), Path(npz_path)
    names, paths = _retina_outputs()
    refuse_same_as_input([out / p for p in [*paths, "dataset_info.json"]], {"--npz": npz_path})
    refuse_protected_folders([out], "OUT", folders=True)
    data = load_npz(npz_path)
    splits = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        images, labels = npz_split(npz_path, data, split)
        splits[split] = (images, labels[:, 0], _balanced_indices(labels[:, 0], per_class))
    rels = [_image_rel(split, idx) for split, (_, _, picked) in splits.items() for idx in picked]
    with build_lock(out):
        check_owned(out, PREFIX, BUILDER, paths, names, set(dataset_info_names(out)), overwrite,
                    foreign_advice=OWN_FILES, edited_advice="")
        refuse_symlinks([out / rel for rel in rels])
        earlier = read_manifest(out, PREFIX, BUILDER) or {}
        kept = [e["path"] for e in earlier.get("images", []) if (out / e["path"]).is_file()]  # still the build's
        manifest = {"builder": BUILDER, "name": PREFIX, "files": paths, "datasets": names,
                    "images_dir": "retina_images", "images": [{"path": rel} for rel in sorted({*kept, *rels})]}
        write_manifest(out, PREFIX, manifest)  # before any other file: it owns them
        written: dict[str, str] = {}
        for split, (images, labels, picked) in splits.items():
            written.update(_write_retina_split(out, npz_path, images, labels, picked, split, image_size))
        write_atomic(out / "retina_vocab.yaml", "# RetinaMNIST DR grades (CC BY 4.0, MedMNIST v2)\n"
                     + "".join(f'"{tok}": "{kw}"\n' for tok, kw in RETINA_CLASSES))
        merge_dataset_info(out, {name: dataset_entry(file) for name, file in written.items()}, overwrite=overwrite)
        record_hashes(out, PREFIX, manifest, [p for p in paths if p.endswith((".json", ".yaml"))
                                              and p != manifest_name(PREFIX)])
    return written


def _image_rel(split: str, idx: int) -> str:
    return f"retina_images/{split}_{idx:04d}.png"


def _write_retina_split(out: Path, npz_path: Path, images, labels, picked: list[int], split: str,
                        image_size: int) -> dict[str, str]:
    from PIL import Image  # numpy / Pillow only when images are written (`attok --help` stays fast)

    from ..data.images import array_to_image

    rows_attok, rows_vanilla = [], []
    for idx in picked:
        rel = _image_rel(split, idx)
        image = array_to_image(images[idx], f"{npz_path}: {split} sample {idx}")
        write_png(out / rel, image.resize((image_size, image_size), Image.Resampling.BICUBIC))
        rows_attok.append(_sample(rel, int(labels[idx]), with_tokens=True))
        rows_vanilla.append(_sample(rel, int(labels[idx]), with_tokens=False))
    written = {}
    for kind, rows in (("attok", rows_attok), ("vanilla", rows_vanilla)):
        name = f"retina_{kind}_{split}"
        write_atomic(out / f"{name}.json", json.dumps(rows, indent=1))
        written[name] = f"{name}.json"
    return written


PNEUMONIA_NPZ = _source("pneumoniamnist")
MODALITY_CLASSES: tuple[tuple[str, str], ...] = (
    ("<|fundus_photo|>", "fundus photograph"),
    ("<|xray_chest|>", "chest x-ray"),
)


def build_modality_sample(out_dir: str | os.PathLike, per_class: int = 8, image_size: int = 56) -> str:
    """A two-attribute set an untrained tiny model can separate: RetinaMNIST fundus vs PneumoniaMNIST X-ray.

    Used where a test needs ACM to *learn* (the five DR grades are too alike for a random tiny model).
    Returns the dataset name, ``modality_train``.
    """
    import numpy as np
    from PIL import Image

    out = Path(out_dir)
    sources = (np.load(RETINA_NPZ)["train_images"], np.load(PNEUMONIA_NPZ)["train_images"])
    rows = []
    for index in range(per_class):
        for (token, keyword), images in zip(MODALITY_CLASSES, sources, strict=True):
            rel = f"modality_images/{token[2:-2]}_{index:03d}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).convert("RGB").resize((image_size, image_size)).save(out / rel)
            rows.append({
                "messages": [{"role": "user", "content": "<image>What kind of image is this?"},
                             {"role": "assistant", "content": f"{token} {keyword}"}],
                "images": [rel],
                "label": keyword,
            })
    write_atomic(out / "modality_train.json", json.dumps(rows, indent=1))
    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["modality_train"] = dataset_entry("modality_train.json")
    write_atomic(info_path, json.dumps(info, indent=2) + "\n")
    return "modality_train"
