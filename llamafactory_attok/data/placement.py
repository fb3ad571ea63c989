"""How one source image lands in a dataset: copied as it is where nothing about it changes, else decoded, resized
and encoded once, fast.

- **Copied, not re-encoded**: an 8-bit RGB or greyscale PNG or JPEG (formats LF reads as they are) whose shorter side
  is at least ``image_size`` and whose longer side is within ``max_size``. Its bytes are the source's: no quality
  lost, no time spent (re-encoding a 600×450 photo as PNG at Pillow's default level costs ~120 ms).
- **Re-encoded** otherwise: 16-bit / float / palette / transparent images and images with an EXIF orientation (to
  8-bit RGB as a viewer shows them, by the dataset's :class:`~.images.IntensityRule`, see :mod:`.images`),
  images smaller than ``image_size`` (upscaled, shorter side), larger than ``max_size`` (downscaled, longer side;
  the aspect ratio is always kept — never squashed to a square), and array sources (``.npz``). A JPEG source stays a
  JPEG (quality 95); everything else becomes a PNG at compression level 1 (on a grainy 600×450 photo: 33 ms against
  38 ms at Pillow's default level, 3 % larger — the real saving is not re-encoding at all; BENCHMARKS.md §9).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from ..errors import AttTokError
from ..state import atomic_write_bytes
from .images import (
    DEPTH_ADVICE,
    IMAGE_ERRORS,
    IntensityRule,
    as_rgb,
    colour_depth_problem,
    has_transparency,
    needs_turning,
    open_rgb,
)

COPYABLE_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}
COPYABLE_MODES = ("RGB", "L")
PNG_LEVEL = 1
JPEG_QUALITY = 95
MAX_ASPECT = 200  # Qwen2-VL's processor (smart_resize) refuses images more than 200 times longer than wide
MAX_SIDE = 16384  # pixels: beyond this no vision tower takes an image (and Pillow's resize overflows far above)


def check_shape(size: tuple[int, int], written: tuple[int, int], where: str) -> None:
    """An image no vision tower can take is refused naming it: an aspect ratio above :data:`MAX_ASPECT` (a 3000×2
    strip), or a written size beyond :data:`MAX_SIDE` (a thin strip raised to ``--image-size`` on its short side)."""
    ratio = max(size) / max(1, min(size))
    if ratio > MAX_ASPECT:
        raise AttTokError(f"{where}: an image of {size[0]}×{size[1]} pixels (aspect ratio {ratio:.0f}:1); vision "
                          f"towers such as Qwen2-VL's refuse ratios above {MAX_ASPECT}:1. Crop it, or leave it out")
    if max(written) > MAX_SIDE:
        raise AttTokError(f"{where}: raising the shorter side of this {size[0]}×{size[1]} image to --image-size "
                          f"gives {written[0]}×{written[1]} pixels, beyond {MAX_SIDE}; pass --max-size (e.g. 1024) "
                          "or a smaller --image-size")


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


@dataclass(frozen=True)
class Placed:
    """One written image: its path, size, whether its bytes are the source's, and what reading it changed
    (``turned``: an EXIF orientation applied; ``flattened``: transparency composited over black)."""

    path: Path
    size: tuple[int, int]
    copied: bool
    turned: bool = False
    flattened: bool = False
    first_frame: bool = False  # an animated GIF / multi-page TIFF: its first frame was written


PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of every complete PNG
JPEG_END = b"\xff\xd9"  # JPEG's end-of-image marker


def ends_whole(path: Path, fmt: str) -> bool:
    """Whether the PNG / JPEG file ``path`` ends as a complete one does (read from its last KiB: a copy is only made
    of a file that is not cut short; one that fails is decoded instead, which names a truncated file)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 1024))
        tail = handle.read()
    return tail.endswith(PNG_END) if fmt == "PNG" else JPEG_END in tail


def place_image(source: Image.Image | Path, where: str, dest_stem: Path, image_size: int,
                max_size: int | None, rule: IntensityRule | None = None) -> Placed:
    """Write ``source`` as ``dest_stem`` plus the suffix of its format (``rule``: the dataset's intensity rule)."""
    size: tuple[int, int] | None  # None: a file whose header could not be read
    if isinstance(source, Image.Image):
        flattened = has_transparency(source)
        image = as_rgb(source, where, rule)
        size = target_size(image.size, image_size, max_size)
        check_shape(image.size, size, where)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        path = dest_stem.with_suffix(".png")
        atomic_write_bytes(path, encode(image, ".png"))
        return Placed(path, size, False, flattened=flattened)
    try:
        with Image.open(source) as header:  # lazy: format, mode, size, EXIF and transparency without the pixels
            depth_problem = colour_depth_problem(header, Path(source))
            fmt, mode, size = header.format, header.mode, header.size
            turned, flattened = needs_turning(header), has_transparency(header)
            first_frame = getattr(header, "n_frames", 1) > 1
    except IMAGE_ERRORS:
        fmt, mode, size, turned, flattened, first_frame = None, None, None, False, False, False
        depth_problem = None
    if depth_problem is not None:  # a colour file Pillow would read from its high byte only: never written
        raise AttTokError(f"{where}: {depth_problem}{DEPTH_ADVICE}")
    plain = mode in COPYABLE_MODES and not turned and not flattened and not first_frame
    if size is not None:
        written = target_size(size, image_size, max_size)
        check_shape(size, written, where)
        if fmt in COPYABLE_FORMATS and plain and written == size and ends_whole(Path(source), fmt):
            path = dest_stem.with_suffix(COPYABLE_FORMATS[fmt])
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(path)
            return Placed(path, size, True)
    image = open_rgb(Path(source), where, rule)  # the errors of an unreadable file, named
    size = target_size(image.size, image_size, max_size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    path = dest_stem.with_suffix(suffix)
    atomic_write_bytes(path, encode(image, suffix))
    return Placed(path, size, False, turned, flattened, first_frame)


def check_max_size(max_size: int | None, image_size: int) -> None:
    if max_size is not None and max_size > MAX_SIDE:
        raise AttTokError(f"--max-size {max_size}: at most {MAX_SIDE} pixels (the longer side)")
    if max_size is not None and max_size < image_size:
        raise AttTokError(f"--max-size {max_size} is below --image-size {image_size}: an image cannot have its "
                          "shorter side raised to one and its longer side lowered to the other")


def place_task(task: tuple) -> Placed:
    """One source image into a build's staging folder — a worker's task (:mod:`.parallel`): everything it needs is
    in ``task``: (index, source, split, where, staging root, images folder, image_size, max_size, intensity rule).
    The returned path is relative to the staging root."""
    index, image, split, where, root, images_dir, image_size, max_size, rule = task
    stem = Path(root) / images_dir / split / f"{index:06d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    placed = place_image(image, where, stem, image_size, max_size, rule)
    return replace(placed, path=placed.path.relative_to(root))

