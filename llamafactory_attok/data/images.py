"""Reading source images as 8-bit RGB without losing them: bit depth, value range and Pillow's size limit.

Pillow's ``convert("RGB")`` clips instead of scaling: a 16-bit PNG comes out almost all white (every value above
255 becomes 255) and a float image in [0, 1] all black. So pixel values are scaled first, by one rule:

- 8-bit and boolean images: as they are (boolean: 0 / 255);
- integer images of more bits (16-bit PNG / TIFF, MedMNIST+ ``uint16`` arrays): scaled by the *dataset's*
  maximum (``v * 255 / max``), not by the type's (65535): medical scanners store 10-, 12- or 14-bit values in 16
  bits, which scaled by 65535 would be nearly black. Negative values are refused;
- float images: values in [0, 1] are multiplied by 255, values in [0, 255] kept; anything else (negative, above
  255, NaN, infinite) is refused, naming the image — there is no range to guess.

Both are decided **once per dataset** (:class:`IntensityRule`, from every image's maximum: :func:`intensity_rule`),
never image by image: one dark image of a [0, 255] float dataset is not stretched by 255 on its own, and one dark
scan of a 12-bit dataset is not brightened to full range. The images whose own values would have suggested another
rule (a float image with no value above 1 in a [0, 255] dataset; a high-bit image with no value above 255) are
counted in a warning. A single image read on its own (no dataset) is its own dataset.

Orientation and transparency, as a viewer shows the image: an EXIF orientation tag (phone photos, some scanners) is
applied (the pixels are turned upright; the tag is not kept), and a transparent image (RGBA, LA, a palette or
greyscale PNG with a transparent colour) is composited over black — the background of nearly every medical image —
instead of dropping the alpha channel (which shows whatever colour the transparent pixels happen to hold).

Images larger than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` × 2, about 179 megapixels)
are refused naming the image, as are files that are not images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import AttTokError

# what Pillow raises for a file that is no image, a truncated one, a bad header, or a decompression bomb
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class IntensityRule:
    """How a dataset's pixel values become 8 bits, decided once for the whole dataset (module docstring).

    ``integer_max``: the largest value of the dataset's high-bit integer images (None: it has none above 255);
    ``float_range``: 1.0 or 255.0 for a float dataset (None: no float images)."""

    integer_max: int | None = None
    float_range: float | None = None


@dataclass(frozen=True)
class ImageValues:
    """One image's kind of values and its maximum, for :func:`intensity_rule` (``kind``: "int", "float" or "8bit")."""

    kind: str
    maximum: float


def values_of(array: np.ndarray) -> ImageValues:
    if np.issubdtype(array.dtype, np.floating):
        finite = array[np.isfinite(array)]
        return ImageValues("float", float(finite.max()) if finite.size else 0.0)
    if array.dtype in (np.uint8, np.bool_) or not np.issubdtype(array.dtype, np.integer):
        return ImageValues("8bit", 255.0)
    return ImageValues("int", float(array.max()) if array.size else 0.0)


def intensity_rule(values: Iterable[ImageValues]) -> tuple[IntensityRule, dict[str, int]]:
    """The dataset's rule from every image's values, and how many images disagree with it on their own: "float"
    (no value above 1 in a [0, 255] float dataset) and "int" (no value above 255 in a high-bit dataset)."""
    floats, ints = [], []
    for value in values:
        if value.kind == "float":
            floats.append(value.maximum)
        elif value.kind == "int":
            ints.append(value.maximum)
    float_range = None if not floats else (1.0 if max(floats) <= 1.0 else 255.0)
    integer_max = int(max(ints)) if ints and max(ints) > 255 else None
    disagree = {"float": sum(m <= 1.0 for m in floats) if float_range == 255.0 else 0,
                "int": sum(m <= 255 for m in ints) if integer_max is not None else 0}
    return IntensityRule(integer_max, float_range), disagree


def disagreement_warnings(source: str, rule: IntensityRule, disagree: dict[str, int]) -> list[str]:
    """The warnings for the images that :func:`intensity_rule` counted as disagreeing."""
    notes = []
    if disagree["float"]:
        notes.append(f"{source}: float images with values up to 255, but {disagree['float']} image(s) have no value "
                     "above 1: they are read in the dataset's range [0, 255] (dark), not stretched by 255 one by one")
    if disagree["int"]:
        notes.append(f"{source}: high-bit images with values up to {rule.integer_max}, but {disagree['int']} "
                     "image(s) have no value above 255: every image is scaled by the dataset's maximum "
                     f"({rule.integer_max} -> 255), so these are dark, as they are beside the others")
    return notes


def to_uint8(array: np.ndarray, where: str, rule: IntensityRule | None = None) -> np.ndarray:
    """``array``'s values as ``uint8`` by ``rule`` (default: the image alone is the dataset); an unusable range is
    an error naming ``where``."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if rule is None:
        rule, _ = intensity_rule([values_of(array)])
    if np.issubdtype(array.dtype, np.integer):
        return _scale_integers(array, where, rule.integer_max)
    if np.issubdtype(array.dtype, np.floating):
        return _scale_floats(array, where, rule.float_range)
    raise AttTokError(f"{where}: image values of type {array.dtype} cannot be read as pixels")


def _scale_integers(array: np.ndarray, where: str, integer_max: int | None) -> np.ndarray:
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0:
        raise AttTokError(f"{where}: {array.dtype} image with negative values (min {low}); expected unsigned "
                          "intensities")
    if integer_max is None:
        if high > 255:
            raise AttTokError(f"{where}: values up to {high} in a dataset read as 8-bit")
        return array.astype(np.uint8)
    if high > integer_max:
        raise AttTokError(f"{where}: values up to {high} above the dataset's maximum {integer_max}")
    return np.round(array.astype(np.float64) * (255.0 / integer_max)).astype(np.uint8)


def _scale_floats(array: np.ndarray, where: str, float_range: float | None = None) -> np.ndarray:
    if array.size and not np.isfinite(array).all():
        raise AttTokError(f"{where}: float image with NaN or infinite values")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise AttTokError(f"{where}: float image with values in [{low:g}, {high:g}]; expected [0, 1] or [0, 255] "
                          "(rescale it, or save it as an 8- or 16-bit image)")
    if float_range is None:
        float_range = 1.0 if high <= 1.0 else 255.0
    if high > float_range:
        raise AttTokError(f"{where}: float image with values up to {high:g} in a dataset of range [0, "
                          f"{float_range:g}]")
    scaled = array * 255.0 if float_range == 1.0 else array
    return np.round(scaled).astype(np.uint8)


def array_values(stack: np.ndarray) -> list[ImageValues]:
    """:class:`ImageValues` of every image of an N×H×W(×C) array (an ``.npz`` split)."""
    if not len(stack):
        return []
    if not (np.issubdtype(stack.dtype, np.floating) or np.issubdtype(stack.dtype, np.integer)) \
            or stack.dtype == np.uint8:
        return [ImageValues("8bit", 255.0)] * len(stack)
    flat = stack.reshape(len(stack), -1)
    if np.issubdtype(stack.dtype, np.floating):
        maxima = np.where(np.isfinite(flat), flat, -np.inf).max(axis=1)
        return [ImageValues("float", float(m) if np.isfinite(m) else 0.0) for m in maxima]
    return [ImageValues("int", float(m)) for m in flat.max(axis=1)]


def array_to_image(array: np.ndarray, where: str, rule: IntensityRule | None = None) -> Image.Image:
    """A pixel array (H×W, H×W×1, H×W×3 or H×W×4, any numeric type) as an RGB image; ``rule``: the dataset's
    (default: the array alone is the dataset). Four channels are RGBA, composited over black."""
    array = np.asarray(array)
    pixels = to_uint8(array, where, rule)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise AttTokError(f"{where}: array of shape {array.shape} is not an image (H×W, H×W×3 or H×W×4)")
    return flatten_alpha(Image.fromarray(pixels))


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or "transparency" in image.info


def flatten_alpha(image: Image.Image) -> Image.Image:
    """``image`` as RGB, a transparent one composited over black (not its alpha channel dropped)."""
    if not has_transparency(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")


def needs_turning(image: Image.Image) -> bool:
    """Whether ``image`` carries an EXIF orientation other than "upright" (1)."""
    try:
        return image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)
    except IMAGE_ERRORS:  # a broken EXIF block: nothing to turn by
        return False


def as_rgb(image: Image.Image, where: str, rule: IntensityRule | None = None) -> Image.Image:
    """An opened image as RGB as a viewer shows it: turned by its EXIF orientation, high-bit-depth and float modes
    scaled (not clipped) to 8 bits by ``rule``, transparency composited over black."""
    if needs_turning(image):
        image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_BIT_MODES:
        return array_to_image(np.asarray(image), where, rule)
    return flatten_alpha(image)


_PNG_COLOUR = {2: "RGB", 4: "grey + alpha", 6: "RGBA"}


def colour_depth_problem(opened: Image.Image, path: Path) -> str | None:
    """Why Pillow cannot give this file's colours at their depth (None: it can): a 16-bit RGB / RGBA / grey + alpha
    PNG, or a TIFF of more than 8 bits per colour sample, is opened as 8 bits per channel from the high byte alone —
    12-bit data in 16 bits (values below 4096) would come out nearly black, silently. (16-bit greyscale is read.)"""
    if opened.format == "PNG":
        with open(path, "rb") as handle:
            header = handle.read(26)
        depth, colour = (header[24], header[25]) if len(header) == 26 else (8, 0)
        if depth == 16 and colour in _PNG_COLOUR:
            return f"a 16-bit {_PNG_COLOUR[colour]} PNG"
    elif opened.format == "TIFF":
        bits = opened.tag_v2.get(258) if hasattr(opened, "tag_v2") else None  # BitsPerSample, one per sample
        if isinstance(bits, tuple) and len(bits) > 1 and max(bits) > 8:
            return f"a {max(bits)}-bit colour TIFF"
    return None


DEPTH_ADVICE = (", which Pillow (and LLaMA-Factory with it) reads from the high byte of each channel only (12-bit "
                "data in 16 bits would come out nearly black): convert it to 8 bits per channel first, scaled by the "
                "dataset's maximum (e.g. with OpenCV: cv2.imwrite(out, (cv2.imread(src, cv2.IMREAD_UNCHANGED) / MAX "
                "* 255).astype('uint8'))), or to 16-bit greyscale if it is grey")


def file_values(path: Path, where: str | None = None) -> ImageValues:
    """:class:`ImageValues` of the image file ``path``, decoding it only when its mode has more than 8 bits (the
    header says so); an unreadable file counts as 8-bit here (it is named when it is read for writing). A colour
    file Pillow cannot read at its depth (:func:`colour_depth_problem`) is refused, naming ``where`` (default: the
    path)."""
    try:
        with Image.open(path) as opened:
            problem = colour_depth_problem(opened, path)
            if problem is None and opened.mode not in HIGH_BIT_MODES:
                return ImageValues("8bit", 255.0)
            if problem is None:
                return values_of(np.asarray(opened))
    except (*IMAGE_ERRORS, Image.DecompressionBombError):
        return ImageValues("8bit", 255.0)
    raise AttTokError(f"{where or path}: {problem}{DEPTH_ADVICE}")


def open_rgb(path: Path, where: str, rule: IntensityRule | None = None) -> Image.Image:
    """The image file ``path`` as RGB (see :func:`as_rgb`); an unreadable file or a decompression bomb is an
    :class:`AttTokError` naming ``where``."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decoded here, so that the scaling below (its own errors) runs outside this try
    except Image.DecompressionBombError as err:
        raise AttTokError(f"{where}: image is too large to read safely ({err}); downscale it (e.g. to at most "
                          "4096 pixels on its longer side) before building the dataset") from err
    except IMAGE_ERRORS as err:
        raise AttTokError(f"{where}: cannot be read as an image ({type(err).__name__}: {err}){_hint(path)}") from err
    return as_rgb(opened, where, rule)


def is_dicom(path: Path) -> bool:
    """DICOM files carry "DICM" at byte 128 (after the preamble); some have only the ``.dcm`` suffix."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM" or Path(path).suffix.lower() in (".dcm", ".dicom")
    except OSError:
        return False


def _hint(path: Path) -> str:
    if Path(path).is_dir():
        return "; it is a folder, not an image file: point the source at the image itself"
    if is_dicom(path):
        return ("; it is a DICOM file, which attok (like LLaMA-Factory) does not read: convert it to PNG first, e.g. "
                "with pydicom (`pydicom.dcmread(path).pixel_array`) and Pillow, keeping 16-bit values (they are "
                "scaled, not clipped, on reading)")
    return ""
