"""How one source image lands in a dataset: copied as it is where nothing about it changes, else decoded, resized
and encoded once, fast.

- **Copied, not re-encoded**: an 8-bit RGB or greyscale PNG or JPEG (formats LF reads as they are) whose shorter side
  is at least ``image_size`` and whose longer side is within ``max_size``. Its bytes are the source's: no quality
  lost, no time spent (re-encoding a 600×450 photo as PNG at Pillow's default level costs ~120 ms).
- **Re-encoded** otherwise: 16-bit / float / palette / RGBA images (scaled to 8-bit RGB, see :mod:`.images`),
  images smaller than ``image_size`` (upscaled, shorter side), larger than ``max_size`` (downscaled, longer side;
  the aspect ratio is always kept — never squashed to a square), and array sources (``.npz``). A JPEG source stays a
  JPEG (quality 95); everything else becomes a PNG at compression level 1 (on a grainy 600×450 photo: 33 ms against
  38 ms at Pillow's default level, 3 % larger — the real saving is not re-encoding at all; BENCHMARKS.md §9).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from ..errors import AttTokError
from ..state import atomic_write_bytes
from .images import IMAGE_ERRORS, as_rgb, open_rgb

COPYABLE_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}
COPYABLE_MODES = ("RGB", "L")
PNG_LEVEL = 1
JPEG_QUALITY = 95


def target_size(size: tuple[int, int], image_size: int, max_size: int | None) -> tuple[int, int]:
    """The written size for a source of ``size`` (width, height): the shorter side raised to ``image_size``, the
    longer side lowered to ``max_size``, aspect ratio kept (rounded; at least 1 pixel)."""
    width, height = size
    scale = 1.0
    if min(width, height) < image_size:
        scale = image_size / min(width, height)
    if max_size is not None and max(width, height) * scale > max_size:
        scale = max_size / max(width, height)
    if scale == 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode(image: Image.Image, suffix: str) -> bytes:
    import io

    buffer = io.BytesIO()
    if suffix == ".jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def place_image(source: Image.Image | Path, where: str, dest_stem: Path, image_size: int,
                max_size: int | None) -> tuple[Path, tuple[int, int], bool]:
    """Write ``source`` as ``dest_stem`` plus the suffix of its format; return (path written, its size, copied?)."""
    if isinstance(source, Image.Image):
        image = as_rgb(source, where)
        size = target_size(image.size, image_size, max_size)
        if size != image.size:
            image = image.resize(size, Image.BICUBIC)
        path = dest_stem.with_suffix(".png")
        atomic_write_bytes(path, encode(image, ".png"))
        return path, size, False
    try:
        with Image.open(source) as header:  # lazy: format, mode and size without decoding the pixels
            fmt, mode, size = header.format, header.mode, header.size
    except IMAGE_ERRORS:
        fmt, mode, size = None, None, None
    if fmt in COPYABLE_FORMATS and mode in COPYABLE_MODES and size is not None:
        if target_size(size, image_size, max_size) == size:
            path = dest_stem.with_suffix(COPYABLE_FORMATS[fmt])
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(path)
            return path, size, True
    image = open_rgb(Path(source), where)  # the errors of an unreadable file, named
    size = target_size(image.size, image_size, max_size)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    path = dest_stem.with_suffix(suffix)
    atomic_write_bytes(path, encode(image, suffix))
    return path, size, False


def check_max_size(max_size: int | None, image_size: int) -> None:
    if max_size is not None and max_size > 16384:
        raise AttTokError(f"--max-size {max_size}: at most 16384 pixels (the longer side)")
    if max_size is not None and max_size < image_size:
        raise AttTokError(f"--max-size {max_size} is below --image-size {image_size}: an image cannot have its "
                          "shorter side raised to one and its longer side lowered to the other")


def place_task(task: tuple) -> tuple[str, bool]:
    """One source image into a build's staging folder — a worker's task (:mod:`.parallel`): everything it needs is
    in ``task``: (index, source, split, where, staging root, images folder, image_size, max_size). Returns the path
    written, relative to the staging root, and whether it was copied."""
    index, image, split, where, root, images_dir, image_size, max_size = task
    stem = Path(root) / images_dir / split / f"{index:06d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    path, _, copied = place_image(image, where, stem, image_size, max_size)
    return str(path.relative_to(root)), copied
