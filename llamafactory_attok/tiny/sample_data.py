"""The small real sample dataset shipped for the demo and the tests: a class-balanced slice of RetinaMNIST.

It writes PNG images (upscaled from 28×28), LLaMA-Factory sharegpt JSON with answers prefixed by the attribute
token, the attribute vocabulary YAML and the matching ``dataset_info.json`` entries. The full data builders
(``attok data …``) are a separate feature; this module only makes the fixture every other part relies on.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..data.lf_format import check_free_names, dataset_entry, merge_dataset_info, write_atomic, write_png
from ..errors import AttTokError
from ..safe_paths import build_lock, refuse_same_as_input

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


def _retina_outputs() -> tuple[list[str], list[str]]:
    """Dataset names and paths (relative to the output folder) that :func:`build_retina_sample` writes."""
    names = [f"retina_{kind}_{split}" for split in ("train", "test") for kind in ("attok", "vanilla")]
    return names, ["retina_images", *(f"{n}.json" for n in names), "retina_vocab.yaml"]


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
    merged (existing entries kept). Like the ``attok data`` builders it refuses, before writing anything, to
    replace any of those datasets, files or the images folder (the user may have edited the vocabulary) unless
    ``overwrite``; ``npz_path`` may not be one of them. Builds into one folder exclude each other.
    """
    for option, value in (("--per-class-train", per_class_train), ("--per-class-test", per_class_test),
                          ("--image-size", image_size)):
        if value < 1:
            raise AttTokError(f"{option} {value}: must be at least 1")
    from ..data.sources import load_npz

    out, npz_path = Path(out_dir), Path(npz_path)
    names, paths = _retina_outputs()
    refuse_same_as_input([out / p for p in [*paths, "dataset_info.json"]], {"--npz": npz_path})
    data = load_npz(npz_path)
    with build_lock(out):
        _refuse_foreign_images(out / "retina_images")  # before "pass --overwrite": never suggested for the user's
        check_free_names(out, names, overwrite, paths=paths)
        (out / "retina_images").mkdir(parents=True, exist_ok=True)
        (out / "retina_images" / SAMPLE_MARKER).touch()
        written: dict[str, str] = {}
        for split, per_class in (("train", per_class_train), ("test", per_class_test)):
            written.update(_write_retina_split(out, npz_path, data, split, per_class, image_size))
        write_atomic(out / "retina_vocab.yaml", "# RetinaMNIST DR grades (CC BY 4.0, MedMNIST v2)\n"
                     + "".join(f'"{tok}": "{kw}"\n' for tok, kw in RETINA_CLASSES))
        merge_dataset_info(out, {name: dataset_entry(file) for name, file in written.items()}, overwrite=overwrite)
    return written


SAMPLE_MARKER = ".attok-sample-data"  # in every retina_images/ this command wrote: only such a folder is replaced


def _refuse_foreign_images(folder: Path) -> None:
    """--overwrite replaces the images of an earlier `attok sample-data`, never a folder of the user's (no marker)
    or files the user added to ours."""
    if not folder.exists():
        return
    if not (folder / SAMPLE_MARKER).is_file():
        raise AttTokError(f"{folder}: not written by `attok sample-data` (no {SAMPLE_MARKER} in it): it may hold your "
                          "own images and is never replaced; choose another folder")
    pattern = re.compile(r"^(train|test)_\d{4}\.png$")
    foreign = sorted(p.name for p in folder.iterdir() if p.name != SAMPLE_MARKER and not pattern.match(p.name))
    if foreign:
        raise AttTokError(f"{folder}: {', '.join(foreign[:3])}{' …' if len(foreign) > 3 else ''} were not written by "
                          "`attok sample-data`; move them away, nothing was replaced")


def _write_retina_split(out: Path, npz_path: Path, data: dict, split: str, per_class: int,
                        image_size: int) -> dict[str, str]:
    from PIL import Image  # numpy / Pillow only when images are written (`attok --help` stays fast)

    from ..data.images import array_to_image
    from ..data.sources import npz_split

    images, labels = npz_split(npz_path, data, split)
    labels = labels[:, 0]
    rows_attok, rows_vanilla = [], []
    for idx in _balanced_indices(labels, per_class):
        rel = f"retina_images/{split}_{idx:04d}.png"
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
