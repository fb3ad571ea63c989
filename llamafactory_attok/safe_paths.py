"""Path guards every ``attok`` command applies before it writes anything.

- an output is never one of the command's inputs (the same path, or a path resolving to the same file:
  ``data/x.json`` and ``./data/../data/x.json``, a symlink or a hard link), so no input is replaced by a result;
- an output is never a symbolic link (:func:`refuse_symlink`): a write would replace the link by a file, leaving
  its target stale, and a folder written as a whole would replace the link;
- a folder a command creates as a whole (``attok tiny-model``) is refused when it already holds anything, unless
  ``--overwrite``;
- dataset names become file names inside ``--out``: they may not leave it (no path separator, no ``..``, no
  leading dot, not empty);
- builds into one folder exclude each other (:func:`build_lock`), so two builds of one name at once serialise and
  the last one wins whole, and no ``dataset_info.json`` entry is lost to a concurrent merge.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from .errors import AttTokError

PathLike = str | os.PathLike


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (after ``..``, symlinks and hard links)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: then only the resolved paths could make them equal
        return False


def within(path: PathLike, folder: PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (after ``..`` and symlinks)."""
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def refuse_same_as_input(outputs: Iterable[PathLike], inputs: Mapping[str, PathLike | None],
                         what: str = "output") -> None:
    """Refuse when one of ``outputs`` is the same file as an input (``option -> path``; None: not given), or lies
    inside an input folder (a model, an adapter: their files are never a command's output)."""
    for out in outputs:
        for option, source in inputs.items():
            if source is not None and same_file(out, source):
                raise AttTokError(f"{what} {out} is the same file as {option} {source}: writing it would replace "
                                  "the input; choose another output path")
            if source is not None and Path(source).is_dir() and within(out, source):
                raise AttTokError(f"{what} {out} lies inside {option} {source}: a command never writes into the "
                                  "folders it reads; choose an output path outside it")


def refuse_symlink(path: PathLike, option: str = "output") -> None:
    """No command writes through or replaces a symbolic link it did not create (the link would become a file or a
    folder of its own, and whatever else reads its target would stay stale): refused, naming link and target."""
    path = Path(path)
    if path.is_symlink():
        raise AttTokError(f"{option} {path} is a symbolic link to {os.readlink(path)}: attok never writes through or "
                          f"replaces a link; pass the target's real path ({path.resolve()}) or remove the link")


def refuse_symlinks(paths: Iterable[PathLike], option: str = "output") -> None:
    """:func:`refuse_symlink` for each of ``paths``."""
    for path in paths:
        refuse_symlink(path, option)


def output_file(path: PathLike, option: str, overwrite: bool) -> Path:
    """A file the command writes: refused when it is a symbolic link or a folder, or when it exists (unless
    ``overwrite``). Call it after :func:`refuse_same_as_input`, whose message says more when the file is an input."""
    path = Path(path)
    refuse_symlink(path, option)
    if path.is_dir():
        raise AttTokError(f"{option} {path} is a folder; give the path of the file to write")
    if path.exists() and not overwrite:
        raise AttTokError(f"{option} {path} already exists; pass --overwrite to replace it, or choose a new path")
    return path


def new_output_path(path: PathLike, overwrite: bool, option: str) -> Path:
    """A folder the command writes as a whole: refused when it is a symbolic link or a file, or a folder with
    anything in it (unless ``overwrite``); an empty folder is fine."""
    path = Path(path)
    refuse_symlink(path, option)
    if path.exists() and not path.is_dir():
        raise AttTokError(f"{option} {path} is a file, not a folder; choose a folder path")
    if overwrite and path.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise AttTokError(f"{option} {path} is the current folder or one above it; it cannot be replaced as a "
                          "whole: choose another folder")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:5]) + (" …" if len(entries) > 5 else "")
        raise AttTokError(f"{option} {path} already exists with {len(entries)} entries ({shown}); pass --overwrite "
                          "to replace it, or choose a new folder")
    return path


MAX_NAME_LENGTH = 120


def dataset_name(name: str, option: str = "--name") -> str:
    """A dataset name that stays a plain file name inside the output folder, else an error naming the option."""
    problem = None
    if not name or not name.strip():
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif ".." in name:
        problem = "contains '..'"
    elif name.startswith("."):
        problem = "starts with a dot (hidden files are skipped by file browsers and by attok's own image reader)"
    elif any(ord(ch) < 32 for ch in name):
        problem = "contains a control character"
    elif len(name) > MAX_NAME_LENGTH:
        problem = (f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} (the longest file a build writes adds "
                   "about 30 to it, and file names stop at 255 bytes)")
    elif not all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in name):
        problem = "holds a character other than ASCII letters, digits, '_' and '-' (LF splits `dataset` on commas)"
    if problem:
        raise AttTokError(f"{option} {name!r} {problem}; a dataset name becomes file names inside --out: use letters, "
                          "digits, '_' and '-' (e.g. chest_xray)")
    return name


STAGING_PATTERN = ".*.building.*"  # the temp folders builds stage their images in (tempfile.mkdtemp prefixes)
STAGING_MARKER = ".attok-staging"  # written into each staging folder at creation: only such folders are removed


def remove_stale_staging(out: PathLike, keep: str | None = None) -> list[str]:
    """Staging folders an interrupted build left in ``out`` (SIGKILL gives no chance to clean up), but ``keep``
    (the name of this build's own, which it resumes). Call only while holding :func:`build_lock` on ``out``: every
    build of ``out`` holds it while its staging folder exists, so any staging folder seen then belongs to no
    running build."""
    removed = []
    for stale in Path(out).glob(STAGING_PATTERN):
        if stale.name == keep:
            continue
        if stale.is_dir() and not stale.is_symlink() and (stale / STAGING_MARKER).is_file():
            shutil.rmtree(stale)
            removed.append(stale.name)
    if removed:
        print(f"attok: removed {len(removed)} staging folder(s) left by an interrupted build: {', '.join(removed)}",
              file=sys.stderr)
    return removed


@contextlib.contextmanager
def build_lock(out: PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the folder ``out`` (created if missing) while a build checks and writes it.

    The lock is ``flock`` on the folder itself, so no lock file is left behind; another build of the same folder
    waits (saying so on stderr) until this one is done. Folders made here (``out`` and missing parents) and still
    empty afterwards (a build that failed before writing) are removed again: a failed build changes nothing on disk.
    """
    import fcntl

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AttTokError(f"--out {out} is a file, not a folder; give the dataset folder to write into")
    while True:
        created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"attok: another attok build is writing to {out}; waiting for it to finish", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _still_there(fd, out):
            break
        os.close(fd)  # the build we waited for removed the (empty) folder it had made: lock the path anew
    try:
        yield out
    finally:
        with contextlib.suppress(OSError):  # removed only while still empty, and while still locked
            for folder in created:
                folder.rmdir()
        os.close(fd)  # releases the lock


def _still_there(fd: int, path: Path) -> bool:
    """Whether ``path`` is still the folder open as ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


IMAGE_OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def dataset_images(dataset_json: PathLike) -> frozenset[Path]:
    """The image files an LF sharegpt / alpaca dataset file lists (``images``, relative to its folder), resolved;
    empty for a file that is not such a list (the command reading it names that itself). Read once per file version
    (a command checks the same dataset against several outputs and against its validation split)."""
    path = Path(dataset_json).expanduser().absolute()  # images are relative to the folder named, as LF reads them
    try:
        stat = path.stat()
    except OSError:
        return frozenset()
    return _dataset_images(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _dataset_images(path: Path, mtime_ns: int, size: int) -> frozenset[Path]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    base, found = path.parent, set()
    for row in rows if isinstance(rows, list) else []:
        images = row.get("images") if isinstance(row, dict) else None
        for image in [images] if isinstance(images, str) else images if isinstance(images, list) else []:
            if isinstance(image, str):
                found.add((base / image).expanduser().resolve())
    return frozenset(found)


def refuse_among_dataset_images(outputs: Iterable[PathLike], datasets: Mapping[str, PathLike | None]) -> None:
    """No output is one of the images a dataset it reads lists (replacing one breaks the dataset), and no image
    output (a figure, a confusion matrix) lands in a folder kept for those images, where it would pass for one of
    them (a build's ``N_images/<split>/`` folder, an ImageFolder class); a JSON output beside the images, or any output
    in the dataset file's own folder, is fine."""
    for option, dataset in datasets.items():
        if not dataset:
            continue
        images = dataset_images(dataset)
        folders = {image.parent for image in images} - {Path(dataset).expanduser().resolve().parent}
        for output in outputs:
            path = Path(output).expanduser().resolve()
            if path in images:
                raise AttTokError(f"{output}: an image of {option} {dataset}; an output never replaces what a command "
                                  "reads — choose another path")
            if path.parent in folders and path.suffix.lower() in IMAGE_OUTPUT_SUFFIXES:
                raise AttTokError(f"{output}: would be written into {path.parent}, a folder of {option} {dataset}'s "
                                  "images; choose an output folder of its own")


def dataset_folder_files(dataset: PathLike) -> dict[Path, str]:
    """The files of a dataset's folder that LF and attok read, by what they are: ``dataset_info.json``, every dataset
    file it lists, the builders' manifests (``*_build.json``) and every file they list, vocabularies and class maps
    (``*_vocab.yaml``, ``*_classes.yaml``)."""
    import json

    folder = Path(dataset).expanduser().resolve().parent
    found = {folder / "dataset_info.json": "the folder's dataset_info.json (LF's index of its datasets)"}
    try:
        info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    for name, entry in info.items() if isinstance(info, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
            found[(folder / entry["file_name"]).resolve()] = f"the file of dataset {name} (dataset_info.json)"
    for pattern, what in (("*_build.json", "a build's manifest"), ("*_vocab.yaml", "a vocabulary"),
                          ("*_classes.yaml", "a class map")):
        for path in folder.glob(pattern):
            found.setdefault(path.resolve(), what)
    for manifest in folder.glob("*_build.json"):  # every file a build wrote (its report, its datasets …)
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            continue
        for name in listed if isinstance(listed, list) else ():
            if isinstance(name, str):
                found.setdefault((folder / name).resolve(), f"a file of the build {manifest.name} lists")
    return found


def refuse_dataset_folder_files(outputs: Iterable[PathLike], datasets: Mapping[str, PathLike | None]) -> None:
    """No output is a file the dataset's folder is read through (:func:`dataset_folder_files`) — with or without
    ``--overwrite``: replacing ``dataset_info.json`` or a build manifest breaks every later command on the folder."""
    for option, dataset in datasets.items():
        if not dataset:
            continue
        protected = dataset_folder_files(dataset)
        for output in outputs:
            what = protected.get(Path(output).expanduser().resolve())
            if what is not None:
                raise AttTokError(f"{output}: {what} in the folder of {option} {dataset}; an output never replaces "
                                  "what LF and attok read — choose another path")


MODEL_MARKERS = ("adapter_config.json", "attok_config.json", "trainer_state.json")


def protected_folder(folder: PathLike) -> str | None:
    """What ``folder`` is when no command's output belongs in it (None: an ordinary folder): a model, adapter or
    checkpoint folder (its configs and weights), or a dataset build's images folder (a ``*_build.json`` beside it
    names it)."""
    import json

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return None
    if any((folder / name).is_file() for name in MODEL_MARKERS) or (
            (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))):
        return "a model, adapter or checkpoint folder"
    for manifest in folder.parent.glob("*_build.json"):
        try:
            body = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(body, dict) and (body.get("images_dir") == folder.name or folder.name in body.get("files", [])):
            return f"the images folder of a dataset build ({manifest.name})"
    return None


def refuse_protected_folders(paths: Iterable[PathLike], option: str, folders: bool = False) -> None:
    """No output lands in a :func:`protected_folder` (``folders``: the paths are output folders themselves, checked
    as such) — with or without ``--overwrite``: a report over an adapter's config stops it loading, a dataset written
    into a build's images folder blocks that build's rebuild."""
    for path in paths:
        folder = Path(path) if folders else Path(path).parent
        what = protected_folder(folder)
        if what is not None:
            raise AttTokError(f"{option} {path}: {folder} is {what}; outputs never go there — choose a folder of "
                              "their own")


def refuse_outputs_over_reads(outputs: Iterable[PathLike], out: PathLike, inputs: Mapping[str, PathLike | None],
                              datasets: Mapping[str, PathLike | None]) -> None:
    """The checks every scoring command (`attok predict`, `eval classify`, `eval vqa`) makes of the files it writes
    (``outputs``; ``out``: the ``--out`` they belong to) before reading anything: none is an input, an image of a
    dataset or a file its folder is read through, and ``--out`` is not in a model, adapter or images folder."""
    outputs = list(outputs)
    refuse_same_as_input(outputs, inputs)
    refuse_among_dataset_images(outputs, datasets)
    refuse_dataset_folder_files(outputs, datasets)
    refuse_protected_folders([out], "--out")

