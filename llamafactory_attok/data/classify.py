"""`attok data classify`: a labelled image source → LF sharegpt datasets with attribute tokens (paper A.2, §5.1).

Outputs, for the dataset name N and the prefix P (N, or ``N_vanilla`` with ``--vanilla``): ``P_images/`` (PNG),
``P_{open,close}_{train,val,test}.json``, ``N_vocab.yaml`` (AttTok builds only) and their ``dataset_info.json``
entries. Open-ended questions list no candidates; close-ended ones list all class names, in an order shuffled per
sample. Every class of the class map needs at least one image (an option no sample can have is refused).

Safety: each build owns its images folder (a vanilla build of N writes ``N_vanilla_images/``, never N's images).
Before anything is written, every dataset name and path the build writes must be free, else an error (unless
``overwrite``). Images are written to a temp folder inside the output folder and renamed into place at the end, so
a failed build leaves the output folder as it was; with ``overwrite`` the previous build of P (images folder, JSON
files, ``dataset_info.json`` entries) is replaced as a whole. Builds into one output folder hold its lock
(:func:`~llamafactory_attok.safe_paths.build_lock`) from the check to the last write: two builds of one name at
once run one after the other, and the last one wins whole.

Input: the dataset name stays a file name inside the output folder; ``image_size`` ≥ 1, each ratio in [0, 1) and
their sum below 1; an image listed twice is kept once (same label and split) or refused (another label or split:
leakage); 16-bit and float images are scaled, not clipped (:mod:`.images`); a class too small for the ratios is
named in a warning.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import AttTokError
from ..json_stream import Lazy
from ..progress import progress
from ..safe_paths import (
    build_lock,
    dataset_name,
    refuse_protected_folders,
    refuse_same_as_input,
    refuse_symlinks,
    remove_stale_staging,
    within,
)
from ..state import atomic_write_bytes, fsync_dir
from ..vocab import load_text_yaml, read_text, validate_token_name
from .build_journal import Journal, build_key, interrupted_note, open_staging, staging_name
from .build_manifest import (
    check_owned,
    edited_entries,
    edited_files,
    manifest_name,
    read_manifest,
    record_hashes,
    write_manifest,
)
from .checks import check_duplicate_content, check_labels, check_split_coverage
from .image_records import ImageRecords, Record
from .images import IntensityRule, disagreement_warnings, file_values, intensity_rule
from .lf_format import (
    attribute_token,
    dataset_entry,
    dataset_info_names,
    merge_dataset_info,
    sharegpt_row,
    write_json,
    write_vocab,
)
from .parallel import check_workers, ordered_map
from .placement import MAX_SIDE, check_max_size, place_task
from .sources import SPLITS, Item, drop_duplicates, warn

OPEN_QUESTION = "<image>What is the diagnosis shown in this {modality} image?"
CLOSE_QUESTION = (
    "<image>What is the diagnosis shown in this {modality} image? Options: {options}. Answer with one option."
)


@dataclass(frozen=True)
class ClassSpec:
    label: str
    name: str
    keyword: str
    token: str


_MARKUP = re.compile(r"<\|?[^<>\s]*\|?>|[\x00-\x1f\x7f{}]")


def plain_text(value: str, what: str, where: str) -> str:
    """Text that goes into every prompt or answer (modality, class names, keywords, labels): refused when it holds
    markup a template or LF's multimodal plugin would read — ``<image>``, ``<|im_end|>``, ``<|xray_x|>`` — braces
    or control characters, so it never becomes a placeholder or a special token at training."""
    import unicodedata

    hidden = next((ch for ch in value if unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cc")), None)
    if hidden is not None:
        kind = "control" if unicodedata.category(hidden) == "Cc" else "invisible"
        names = {"\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN"}
        name = unicodedata.name(hidden, names.get(hidden, "unnamed"))
        raise AttTokError(f"{where}: {what} {value!r} contains the {kind} character U+{ord(hidden):04X} ({name}); "
                          "remove it: two labels that look the same would become two classes")
    found = _MARKUP.search(value)
    if found:
        raise AttTokError(f"{where}: {what} {value!r} contains {found.group(0)!r}; it is put into every prompt or "
                          "answer, where a <…> placeholder or <|…|> token would be read as markup: use plain words")
    return value


MAP_KEYS = ("modality", "classes")
CLASS_KEYS = ("name", "keyword", "concept")


def _refuse_unknown_keys(mapping: dict, known: tuple[str, ...], where: str) -> None:
    """A misspelt key (``keywrod:``) would be ignored silently and its value lost: refused, with the nearest key."""
    import difflib

    for key in mapping:
        if key not in known:
            near = difflib.get_close_matches(str(key).lower(), known, n=1)
            hint = f"did you mean `{near[0]}`? " if near else ""
            raise AttTokError(f"{where}: unknown key `{key}`; {hint}the keys are {', '.join(known)}")


def load_class_map(path: str | Path, raw: dict | None = None) -> tuple[str, dict[str, ClassSpec]]:
    """YAML: ``modality: fundus`` and ``classes: {label: {name, keyword?, concept?}}`` (or ``label: name``).

    ``raw``: an already parsed map (a derived one), ``path`` then only names it in errors.

    Every value is read as the text written (``01:`` stays the label "01", ``no:`` the label "no"; see
    :func:`~..vocab.load_text_yaml`); a label given twice is refused.
    """
    path = Path(path)
    try:
        parsed = load_text_yaml(read_text(path), str(path), "class label") if raw is None else raw
    except yaml.YAMLError as err:
        raise AttTokError(f"{path}: malformed class map: {err}") from err
    if not isinstance(parsed, dict) or "modality" not in parsed or not isinstance(parsed.get("classes"), dict):
        raise AttTokError(f"{path}: a class map needs `modality:` and a `classes:` mapping label -> name")
    _refuse_unknown_keys(parsed, MAP_KEYS, f"{path}: top level")
    if not isinstance(parsed["modality"], str):
        raise AttTokError(f"{path}: `modality:` must be one word or phrase of text (e.g. fundus, xray), got "
                          f"{type(parsed['modality']).__name__} {parsed['modality']!r}")
    modality = plain_text(str(parsed["modality"]).strip(), "the modality", str(path))
    if not modality:
        raise AttTokError(f"{path}: `modality:` is empty; name the imaging modality (e.g. fundus, xray)")
    specs: dict[str, ClassSpec] = {}
    tokens: dict[str, object] = {}  # token -> the label that gives it
    keywords: dict[str, object] = {}  # keyword (case and spacing ignored) -> the label that gives it
    for label, value in parsed["classes"].items():
        if not isinstance(value, (str, dict)) and value is not None:
            raise AttTokError(f"{path}: class {label!r}: give its answer name as text (`{label}: normal chest`) or a "
                              f"mapping with name / keyword / concept, not a {type(value).__name__} ({value!r})")
        entry = {"name": value} if isinstance(value, str) else dict(value or {})
        _refuse_unknown_keys(entry, CLASS_KEYS, f"{path}: class {label!r}")
        wrong = [k for k, v in entry.items() if not isinstance(v, str)]
        if wrong:
            raise AttTokError(f"{path}: class {label!r}: `{wrong[0]}` must be text, got "
                              f"{type(entry[wrong[0]]).__name__} {entry[wrong[0]]!r}")
        if not entry.get("name"):
            raise AttTokError(f"{path}: class {label!r} needs a `name`")
        plain_text(str(label), "the label", f"{path}: class {label!r}")
        for key in ("name", "keyword", "concept"):
            if entry.get(key):
                plain_text(str(entry[key]), f"the {key}", f"{path}: class {label!r}")
        token = attribute_token(str(entry.get("concept") or entry["name"]), modality)
        validate_token_name(token, f"{path}: class {label!r}")
        if token in tokens:
            raise AttTokError(f"{path}: classes {tokens[token]!r} and {label!r} both give the token {token}")
        tokens[token] = label
        keyword = str(entry.get("keyword") or entry["name"])
        folded = " ".join(keyword.split()).casefold()
        if folded in keywords:
            raise AttTokError(f"{path}: classes {keywords[folded]!r} and {label!r} both have the keyword {keyword!r}: "
                              "their keyword entries would start equal (Eq. 5) and a generated answer could not be "
                              "told apart by it; give each class its own `keyword:`")
        keywords[folded] = label
        specs[str(label)] = ClassSpec(str(label), str(entry["name"]), keyword, token)
    return modality, specs


def derive_class_map(labels: list[str], modality: str) -> tuple[dict, str]:
    """Without a class map: each label is its own answer name and keyword, its slug the concept.

    Returns the class map (the YAML shape :func:`load_class_map` reads) and its text, to write next to the output.
    """
    if not modality or not modality.strip():
        raise AttTokError("without --class-map, --modality must name the imaging modality (e.g. fundus, xray)")
    classes = {label: {"name": label, "keyword": label} for label in sorted(set(labels))}
    mapping = {"modality": modality.strip(), "classes": classes}
    header = ("# class map derived by `attok data classify` from the labels; edit the names, keywords and concepts\n"
              "# and pass it back with --class-map\n")
    return mapping, header + yaml.safe_dump(mapping, allow_unicode=True, sort_keys=False)


def looks_like_code(label: str) -> bool:
    """A label that is a code rather than words: digits ("0"–"4"), or short upper-case letters/digits ("AKIEC",
    "NV", "B2"), or any label of one or two characters."""
    text = label.strip()
    return text.isdigit() or len(text) <= 2 or (len(text) <= 6 and text.isupper() and " " not in text)


MAX_AUGMENT_FACTOR = 20  # augmented images per training original, at most: a typo in --augment-target fills disks


def check_split_options(image_size: int, val_ratio: float, test_ratio: float) -> None:
    """``image_size`` at least 1; each ratio in [0, 1) and their sum below 1 (a training split must remain)."""
    if not 1 <= image_size <= MAX_SIDE:
        raise AttTokError(f"--image-size {image_size}: must be between 1 and {MAX_SIDE} (pixels of the shorter side)")
    for option, ratio in (("--val-ratio", val_ratio), ("--test-ratio", test_ratio)):
        if not 0 <= ratio < 1:
            raise AttTokError(f"{option} {ratio}: must be in [0, 1)")
    if val_ratio + test_ratio >= 1:
        raise AttTokError(f"--val-ratio {val_ratio} + --test-ratio {test_ratio} = {val_ratio + test_ratio:g}: the "
                          "sum must be below 1, or no image is left for training")


def stratified_split(items: list[Item], val_ratio: float, test_ratio: float, seed: int) -> list[Item]:
    """Give split-less items a seeded, per-class (stratified) train/val/test assignment; classes too small to
    reach every split the ratios ask for are named in a warning, with their counts."""
    rng = random.Random(seed)
    by_label: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    thin = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_test, n_val = round(len(group) * test_ratio), round(len(group) * val_ratio)
        for index, item in enumerate(group):
            item.split = "test" if index < n_test else "val" if index < n_test + n_val else "train"
        counts = Counter(item.split for item in group)
        wanted = ["train", *(["val"] if val_ratio else []), *(["test"] if test_ratio else [])]
        if any(not counts[split] for split in wanted):
            thin.append(f"{label!r} ({len(group)} image(s): " + ", ".join(f"{s} {counts[s]}" for s in SPLITS) + ")")
    if thin:
        warn(f"class(es) too small for --val-ratio {val_ratio} / --test-ratio {test_ratio} get no sample in some "
             f"split: {'; '.join(thin)}; add images or give the source its own split")
    return items


def carve_val(items: list[Item], val_ratio: float, seed: int) -> set[int]:
    """A source with its own split but no val split (e.g. a CSV whose split column says only train / test): move a
    seeded ``val_ratio`` of each class's training images into val, said on stderr; return their indices. The test
    split is never touched (its images stay unseen)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if item.split == "train":
            by_label[item.label].append(index)
    carved: set[int] = set()
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        carved |= set(group[:round(len(group) * val_ratio)])
    for index in carved:
        items[index].split = "val"
    print(f"attok: the source has no val split: {len(carved)} of its training images ({val_ratio:g} of each class, "
          "seeded) became the val split; the test split is as the source has it (--val-ratio 0 keeps the source's "
          "splits unchanged)", file=sys.stderr)
    return carved


def _question(kind: str, modality: str, specs: list[ClassSpec], rng: random.Random) -> str:
    if kind == "open":
        return OPEN_QUESTION.format(modality=modality)
    names = [s.name for s in specs]
    rng.shuffle(names)
    return CLOSE_QUESTION.format(modality=modality, options=", ".join(names))


def _check_items(items: list[Item], specs: dict[str, ClassSpec], class_map: str | Path) -> None:
    if not items:
        raise AttTokError("the source has no samples; nothing to build")
    for item in items:
        if item.label not in specs:
            raise AttTokError(f"{item.source}: label {item.label!r} is not in the class map {class_map}")
    counts = Counter(item.label for item in items)
    empty = [f"{label!r} ({specs[label].name})" for label in specs if not counts[label]]
    if empty:
        raise AttTokError(f"{class_map}: class(es) {', '.join(empty)} have no image in the source; a close-ended "
                          "option no sample can have would be offered: remove them from the class map or add images")


def _write_images(items: list[Item], specs: dict[str, ClassSpec], root: Path, images_dir: str, image_size: int,
                  augment: bool, augment_target: int | None, seed: int, max_size: int | None,
                  workers: int, journal: Journal) -> ImageRecords:
    """Write the images under ``root/images_dir`` over ``workers`` processes (copied where nothing changes, see
    :mod:`.placement`); return their records (split, label, path relative to the output, source), kept in a file
    in ``root``. Images the ``journal`` of an interrupted run of the same build vouches for are reused
    (:mod:`.build_journal`)."""
    records = ImageRecords(root / RECORDS_FILE)
    try:
        _place_all(items, specs, root, images_dir, image_size, augment, augment_target, seed, max_size, workers,
                   journal, records)
    finally:
        records.close()
    return records


RECORDS_FILE = "images.jsonl"  # in the staging folder, beside the images and the journal


def _place_all(items: list[Item], specs: dict[str, ClassSpec], root: Path, images_dir: str, image_size: int,
               augment: bool, augment_target: int | None, seed: int, max_size: int | None, workers: int,
               journal: Journal, records: ImageRecords) -> None:
    train_files: dict[str, list[str]] = defaultdict(list)  # paths, not images (and only when augmenting)
    rule = _intensity_rule(items)
    todo = [index for index in range(len(items)) if journal.get(f"image {index}") is None]
    tasks = ((index, items[index].image, items[index].split,
              _where(items[index]), str(root), images_dir, image_size, max_size, rule) for index in todo)
    copied = turned = flattened = first_frames = 0
    placed = ordered_map(place_task, tasks, workers, total=len(todo))
    for index, item in enumerate(progress(items, desc="images", total=len(items))):
        if item.split is None:  # build_classification gives every split-less item one first
            raise AttTokError(f"{_where(item)}: the image has no split")
        done = journal.get(f"image {index}")
        if done is None:
            fresh = next(placed)
            done = {"path": str(fresh.path), "copied": fresh.copied, "turned": fresh.turned,
                    "flattened": fresh.flattened, "first_frame": fresh.first_frame}
            journal.record(f"image {index}", **done)
        copied, turned, flattened = copied + done["copied"], turned + done["turned"], flattened + done["flattened"]
        first_frames += done.get("first_frame", False)
        records.add(item.split, item.label, done["path"], item.source)
        if augment and item.split == "train":
            train_files[item.label].append(str(root / done["path"]))
    if copied:
        print(f"attok: {copied} of {len(items)} image(s) copied as they are (8-bit PNG / JPEG within the size limits)",
              file=sys.stderr)
    if turned:
        warn(f"{turned} image(s) carry an EXIF orientation: written turned upright, as image viewers show them "
             "(LLaMA-Factory itself would read them sideways)")
    if first_frames:
        warn(f"{first_frames} image(s) have several frames (animated GIF, multi-page TIFF): the first frame of each "
             "was written; split them into one image per frame if the others matter")
    if flattened:
        warn(f"{flattened} image(s) have an alpha channel or a transparent colour: composited over black (where "
             "they are transparent; the channel is not dropped, which would show whatever colour those pixels hold)")
    if augment and train_files:
        from .augment import augment_task, augmentation_plan, missing_count

        originals = sum(len(v) for v in train_files.values())
        to_make = missing_count(train_files, augment_target)
        if to_make > MAX_AUGMENT_FACTOR * originals:
            raise AttTokError(f"--augment-target {augment_target} would write {to_make} augmented images for "
                              f"{originals} training originals (more than {MAX_AUGMENT_FACTOR} per original); "
                              "lower it (or --no-augment)")

        def plan() -> Iterator[tuple[str, int, int, str, str]]:  # made twice rather than held: memory flat in N
            for label, j, class_index, source in augmentation_plan(train_files, augment_target):
                yield label, j, class_index, source, f"{images_dir}/train_aug/{specs[label].token[2:-2]}_{j:05d}"

        tasks_aug = ((label, j, class_index, source, seed, str(root), stem)
                     for label, j, class_index, source, stem in plan() if journal.get(f"augmented {stem}") is None)
        made = ordered_map(augment_task, tasks_aug, workers,
                           total=sum(journal.get(f"augmented {stem}") is None for *_, stem in plan()))
        for label, *_, stem in progress(plan(), total=to_make, desc="augment"):
            done = journal.get(f"augmented {stem}")
            if done is None:
                done = journal.record(f"augmented {stem}", next(made))
            records.add("train", label, done["path"], "augmented")


def refuse_inputs_in_images_folder(items: list[Item], inputs: dict[str, str | Path | None], folder: Path) -> None:
    """The build replaces ``folder`` (its images folder) as a whole: a source image, the source itself or the class
    map inside it — e.g. a CSV listing an earlier build's images, rebuilt under the same name — would be deleted or
    renumbered under the build's feet; refused, with or without ``--overwrite``."""
    root = str(folder.resolve()) + os.sep
    inside = next((item for item in items if isinstance(item.image, Path)
                   and (os.path.realpath(item.image) + os.sep).startswith(root)), None)
    if inside is not None:
        raise AttTokError(f"{_where(inside)}: the image lies in {folder}, the folder this build writes its images to "
                          "(and replaces as a whole): it would be deleted or replaced while it is read. Copy the "
                          "images elsewhere first, or choose another --name or --out")
    for option, value in inputs.items():
        if value is not None and within(value, folder):
            raise AttTokError(f"{option} {value} lies in {folder}, the folder this build writes its images to (and "
                              "replaces as a whole); move it elsewhere first, or choose another --name or --out")


def _where(item: Item) -> str:
    return item.source if item.source == str(item.image) else f"{item.source}: image {item.image}"


def _intensity_rule(items: list[Item]) -> IntensityRule:
    """How the dataset's pixel values become 8 bits, decided once from every source image (:mod:`.images`): only
    high-bit-depth files are decoded for it (their header says which); in this process, since reading ~10⁴ headers
    takes well under a second, less than starting worker processes."""
    values = (file_values(item.image, _where(item)) for item in items if isinstance(item.image, Path))
    rule, disagree = intensity_rule(values)
    for note in disagreement_warnings("the source images", rule, disagree):
        warn(note)
    return rule


@dataclass
class _Outputs:
    """What one build of ``name`` writes inside the output folder (``prefix``: ``name`` or ``name_vanilla``)."""

    name: str
    prefix: str
    vanilla: bool
    derived_file: str | None

    @property
    def images_dir(self) -> str:
        return f"{self.prefix}_images"

    @property
    def vocab_file(self) -> str | None:
        return None if self.vanilla else f"{self.name}_vocab.yaml"

    @property
    def datasets(self) -> list[str]:
        return [f"{self.prefix}_{kind}_{split}" for kind in ("open", "close") for split in SPLITS]

    def paths(self) -> list[str]:
        extra = [f for f in (self.vocab_file, self.derived_file) if f]
        return [self.images_dir, *(f"{d}.json" for d in self.datasets), *extra, manifest_name(self.prefix)]


def build_classification(items: list[Item], class_map: str | Path | None, out_dir: str | Path, name: str, *,
                         image_size: int = 112, seed: int = 42, val_ratio: float = 0.1, test_ratio: float = 0.2,
                         augment: bool = True, augment_target: int | None = None, vanilla: bool = False,
                         overwrite: bool = False, modality: str | None = None,
                         inputs: dict[str, str | Path | None] | None = None,
                         max_size: int | None = None, workers: int = 1) -> dict[str, str]:
    """Write images, datasets, vocabulary and ``dataset_info.json`` entries; return dataset name → file name.

    Without ``class_map`` the labels are the answer names (``modality`` names the modality) and the derived map
    is written as ``<prefix>_classes.yaml`` next to the datasets, to edit and pass back as ``class_map``.
    ``inputs`` (option → path, e.g. the source) may not be among the files written. The same image listed twice
    is kept once (same label and split, with a warning) or refused (see :func:`.sources.drop_duplicates`).
    Builds into one folder exclude each other (:func:`~llamafactory_attok.safe_paths.build_lock`).
    """
    out = Path(out_dir)
    dataset_name(name)
    refuse_protected_folders([out], "--out", folders=True)
    if name.endswith("_vanilla"):
        raise AttTokError(f"--name {name!r} ends with '_vanilla', the suffix of --vanilla builds: the build of "
                          f"{name!r} and the --vanilla build of {name.removesuffix('_vanilla')!r} would share files; "
                          "choose another name")
    check_split_options(image_size, val_ratio, test_ratio)
    check_max_size(max_size, image_size)
    items = drop_duplicates(items)
    for item in items:
        plain_text(item.label, "the label", item.source)
    check_labels(items)
    prefix = f"{name}_vanilla" if vanilla else name
    derived_text = ""
    if class_map is None:
        if not items:
            raise AttTokError("the source has no samples; nothing to build")
        derived_file = f"{prefix}_classes.yaml"
        plan = _Outputs(name, prefix, vanilla, derived_file)
        mapping, derived_text = derive_class_map([item.label for item in items], modality or "")
        try:
            modality, specs = load_class_map(out / derived_file, raw=mapping)
        except AttTokError as err:  # the derived map is not written yet: name the labels, not a missing file
            why = str(err).removeprefix(f"{out / derived_file}: ")
            raise AttTokError(f"the labels cannot become a class map by themselves: {why}; write a --class-map "
                              "(modality and, per label, name / keyword / concept)") from err
        codes = [label for label in mapping["classes"] if looks_like_code(label)]
        if codes:
            warn(f"labels {', '.join(codes[:8])}{' …' if len(codes) > 8 else ''} look like codes: they become the "
                 "answers and the keyword texts whose embeddings start the keyword entries of the books (Eq. 5), and "
                 f"a code means little to the model. Give names (and keywords) in {out / derived_file}, then "
                 "rebuild the text only, reusing the images: the same command plus --class-map "
                 f"{out / derived_file} --relabel")
        class_map = out / derived_file
    else:
        plan = _Outputs(name, prefix, vanilla, None)
        modality, specs = load_class_map(class_map)
        inputs = {**(inputs or {}), "--class-map": class_map}
    _check_items(items, specs, class_map)
    refuse_same_as_input([out / p for p in [*plan.paths(), "dataset_info.json"]], inputs or {})
    refuse_inputs_in_images_folder(items, inputs or {}, out / plan.images_dir)
    if any(item.split is None for item in items):
        assigned = {index for index, item in enumerate(items) if item.split is None}
        stratified_split([i for i in items if i.split is None], val_ratio, test_ratio, seed)
    elif val_ratio > 0 and not any(item.split == "val" for item in items):
        assigned = carve_val(items, val_ratio, seed)
    else:
        assigned = set()
    if not any(item.split == "train" for item in items):
        raise AttTokError(f"no image is left for training (the source's split, or --val-ratio {val_ratio} / "
                          f"--test-ratio {test_ratio}, puts every image into val or test): lower the ratios or give "
                          "the source a train split")
    check_duplicate_content(items, assigned)
    wanted = tuple(split for split, ratio in (("val", val_ratio), ("test", test_ratio)) if ratio > 0) \
        if assigned else ()
    check_split_coverage(items, wanted)
    key = build_key(BUILDER, {"prefix": prefix, "image_size": image_size, "max_size": max_size, "seed": seed,
                              "augment": augment, "augment_target": augment_target},
                    ((item.image, item.label, item.split) for item in items))
    with build_lock(out):
        check_owned(out, prefix, BUILDER, plan.paths(), plan.datasets, set(dataset_info_names(out)), overwrite)
        remove_stale_staging(out, keep=staging_name(prefix, key))
        staging, journal = open_staging(out, prefix, key)
        keep = False
        try:
            try:
                records = _write_images(items, specs, staging, plan.images_dir, image_size, augment,
                                        augment_target, seed, max_size, check_workers(workers), journal)
            except (KeyboardInterrupt, SystemExit):  # SIGINT / SIGTERM: finished images stay for the same command
                keep = True
                print(interrupted_note(journal), file=sys.stderr)
                raise
            rows_of = _datasets(records.of_split, records.splits, specs, list(specs.values()), modality, prefix,
                                seed, vanilla)
            manifest = _manifest(plan, records.of_split, records.splits, seed)
            write_manifest(out, prefix, manifest)  # before any other file: it owns them
            _write_outputs(out, staging, plan, rows_of, overwrite, derived_text,
                           {s.token: s.keyword for s in specs.values()}, f"{name} ({modality})")
            record_hashes(out, prefix, manifest, [p for p in plan.paths() if p.endswith((".json", ".yaml"))
                                                  and p != manifest_name(prefix)])
        finally:
            journal.close()
            if not keep:
                shutil.rmtree(staging)
    return {d: f"{d}.json" for d in rows_of}


BUILDER = "attok data classify"


def _manifest(plan: _Outputs, records: Callable[[str], Iterable[Record]], splits: set[str], seed: int) -> dict:
    """Every file and dataset entry this build writes, and every image with its raw label and split (what
    :func:`relabel_classification` rebuilds the text from; a :class:`Lazy` list, made from ``records`` when
    written)."""
    images = Lazy(lambda: ({"path": rel, "label": label, "split": split, "source": extra["source"]}
                           for split in SPLITS if split in splits for label, rel, extra in records(split)))
    return {"builder": BUILDER, "name": plan.name, "prefix": plan.prefix, "vanilla": plan.vanilla, "seed": seed,
            "files": plan.paths(), "datasets": plan.datasets, "images_dir": plan.images_dir, "images": images}


def relabel_classification(class_map: str | Path, out_dir: str | Path, name: str, *, seed: int = 42,
                           vanilla: bool = False, overwrite: bool = False) -> dict[str, str]:
    """Rewrite the datasets, vocabulary and ``dataset_info.json`` entries of an earlier build of ``name`` for a new
    class map (names, keywords, concepts), reusing its images as they are: nothing is decoded or encoded again.

    The images, their raw labels and splits come from the build's manifest; every label must be in the class map
    and every class of the map must have images. No file it writes may be the class map (e.g. ``--class-map
    out/N_vocab.yaml``: the vocabulary would replace it), with or without ``overwrite``, nor a symbolic link.
    """
    out = Path(out_dir)
    dataset_name(name)
    prefix = f"{name}_vanilla" if vanilla else name
    plan = _Outputs(name, prefix, vanilla, None)
    outputs = [out / p for p in [*plan.paths(), "dataset_info.json"] if p != plan.images_dir]
    refuse_same_as_input(outputs, {"--class-map": class_map})
    manifest = read_manifest(out, prefix, BUILDER)
    if manifest is None:
        raise AttTokError(f"{out}: no earlier `{BUILDER}` build of {prefix!r} with a manifest "
                          f"({manifest_name(prefix)}); build it once without --relabel")
    modality, specs = load_class_map(class_map)
    per_split: dict[str, list[tuple[str, str, dict]]] = defaultdict(list)
    for entry in manifest["images"]:
        if not (out / entry["path"]).is_file():
            raise AttTokError(f"{out / entry['path']}: an image of the earlier build is missing; rebuild without "
                              "--relabel")
        per_split[entry["split"]].append((entry["label"], entry["path"], {"source": entry["source"]}))
    items = [Item(e["split"], e["label"], e["path"], e["source"]) for e in manifest["images"]]
    _check_items(items, specs, class_map)
    with build_lock(out):
        refuse_symlinks(outputs)
        edited = edited_files(out, manifest, plan.paths()) + edited_entries(out, manifest, plan.datasets)
        if edited and not overwrite:
            raise AttTokError(f"{out}: {', '.join(edited)}: --relabel would rewrite them; pass --overwrite to replace "
                              "your edits, or move the files away first.")
        rows_of = _datasets(lambda split: per_split.get(split, []), set(per_split), specs, list(specs.values()),
                            modality, prefix, seed, vanilla)
        stale = [d for d in plan.datasets if d not in rows_of]  # this build's own names only, whatever the manifest
        kept_files = [f for f in manifest["files"] if f not in {f"{d}.json" for d in stale}]
        write_manifest(out, prefix, {**manifest, "seed": seed, "files": sorted({*kept_files, *plan.paths()}),
                                     "datasets": plan.datasets})
        for dataset, rows in rows_of.items():
            write_json(out / f"{dataset}.json", rows)
        for dataset in stale:
            (out / f"{dataset}.json").unlink(missing_ok=True)
        if plan.vocab_file:
            write_vocab(out / plan.vocab_file, {s.token: s.keyword for s in specs.values()},
                        f"attribute vocabulary of {name} ({modality}), relabelled by `{BUILDER} --relabel`")
        merge_dataset_info(out, {d: dataset_entry(f"{d}.json") for d in rows_of}, overwrite=True, remove=stale)
        written = [f"{d}.json" for d in rows_of] + ([plan.vocab_file] if plan.vocab_file else [])
        record_hashes(out, prefix, read_manifest(out, prefix, BUILDER) or {}, written)
    return {d: f"{d}.json" for d in rows_of}


def _write_outputs(out: Path, staging: Path, plan: _Outputs, rows_of: dict[str, Lazy], overwrite: bool,
                   derived_text: str, vocab: dict[str, str], described: str) -> None:
    """Swap the staged images in, then write datasets, class map, vocabulary and ``dataset_info.json`` entries."""
    stale = [d for d in plan.datasets if d not in rows_of]  # written by a build being replaced, not by this one
    _commit(out, staging, plan.images_dir, rows_of, stale)
    if plan.derived_file:
        atomic_write_bytes(out / plan.derived_file, derived_text.encode("utf-8"))
    if plan.vocab_file:
        write_vocab(out / plan.vocab_file, vocab, f"attribute vocabulary of {described}, written by `attok data "
                                                  "classify`")
    merge_dataset_info(out, {d: dataset_entry(f"{d}.json") for d in rows_of}, overwrite=overwrite, remove=stale)


def _datasets(records: Callable[[str], Iterable[Record]], splits: set[str], specs: dict[str, ClassSpec],
              ordered: list[ClassSpec], modality: str, prefix: str, seed: int, vanilla: bool) -> dict[str, Lazy]:
    """Dataset name -> its sharegpt rows, for every (kind, split) with samples (``splits``); each a :class:`Lazy`
    list made from ``records(split)`` as it is written, so no dataset is held in memory."""
    def rows(split: str, kind: str) -> Iterator[dict]:
        rng = random.Random(f"{seed}-{split}-{kind}")
        for label, rel, extra in records(split):
            spec = specs[label]
            answer = spec.name if vanilla else f"{spec.token} {spec.name}"
            question = _question(kind, modality, ordered, rng)
            yield sharegpt_row(question, answer, [rel], label=spec.name, **extra)

    return {f"{prefix}_{kind}_{split}": Lazy(functools.partial(rows, split, kind))
            for split in SPLITS if split in splits for kind in ("open", "close")}


def _commit(out: Path, staging: Path, images_dir: str, rows_of: dict[str, Lazy], stale: list[str]) -> None:
    """Swap the staged images folder in (a previous one moves into ``staging``), then write the JSON files."""
    target, previous = out / images_dir, staging / "previous"
    if os.path.lexists(target):  # only reached with overwrite
        os.replace(target, previous)
    try:
        os.replace(staging / images_dir, target)
    except BaseException:
        if os.path.lexists(previous):
            os.replace(previous, target)
        raise
    fsync_dir(out)
    for dataset, rows in rows_of.items():
        write_json(out / f"{dataset}.json", rows)
    for dataset in stale:
        (out / f"{dataset}.json").unlink(missing_ok=True)
