"""Reading source images as 8-bit RGB without losing them: bit depth, value range and Pillow's size limit.

Pillow's ``convert("RGB")`` clips instead of scaling: a 16-bit PNG comes out almost all white (every value above
255 becomes 255) and a float image in [0, 1] all black. So pixel values are scaled first, by one rule:

- 8-bit and boolean images: as they are (boolean: 0 / 255);
- integer images of more bits (16-bit PNG / TIFF, MedMNIST+ ``uint16`` arrays): scaled by the *image's own
  maximum* (``v * 255 / max``), not by the type's (65535): medical scanners store 10-, 12- or 14-bit values in 16
  bits, which scaled by 65535 would be nearly black. An image whose maximum is at most 255 is kept as it is.
  Negative values are refused;
- float images: values in [0, 1] are multiplied by 255, values in [0, 255] kept; anything else (negative, above
  255, NaN, infinite) is refused, naming the image — there is no range to guess. For an array *dataset* (``.npz``)
  the range is decided once, from the whole dataset's maximum (:func:`dataset_float_range`), so one dark image of a
  [0, 255] dataset is not stretched by 255 on its own; the images whose own values would have suggested the other
  range are counted in a warning.

Images larger than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` × 2, about 179 megapixels)
are refused naming the image, as are files that are not images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import AttTokError

# what Pillow raises for a file that is no image, a truncated one, a bad header, or a decompression bomb
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """``array``'s values as ``uint8`` by the rule of this module; an unusable range is an error naming ``where``."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        return _scale_integers(array, where)
    if np.issubdtype(array.dtype, np.floating):
        return _scale_floats(array, where)
    raise AttTokError(f"{where}: image values of type {array.dtype} cannot be read as pixels")


def _scale_integers(array: np.ndarray, where: str) -> np.ndarray:
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0:
        raise AttTokError(f"{where}: {array.dtype} image with negative values (min {low}); expected unsigned "
                          "intensities")
    if high <= 255:
        return array.astype(np.uint8)
    return np.round(array.astype(np.float64) * (255.0 / high)).astype(np.uint8)


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


def dataset_float_range(arrays: list[np.ndarray]) -> tuple[float | None, int]:
    """The value range of a float image dataset, decided once from its maximum ([0, 1] or [0, 255]; None for a
    dataset that is not float), and how many images on their own would have suggested the other range."""
    floats = [a for a in arrays if np.issubdtype(a.dtype, np.floating) and a.size]
    if not floats:
        return None, 0
    high = max(float(np.nanmax(a)) for a in floats)
    float_range = 1.0 if high <= 1.0 else 255.0
    if float_range == 1.0:
        return float_range, 0
    per_image = [np.nanmax(a.reshape(len(a), -1), axis=1) for a in floats if a.ndim >= 3]
    disagree = int(sum(int((m <= 1.0).sum()) for m in per_image))
    return float_range, disagree


def array_to_image(array: np.ndarray, where: str, float_range: float | None = None) -> Image.Image:
    """A pixel array (H×W, H×W×1, H×W×3 or H×W×4, any numeric type) as an RGB image; ``float_range``: the
    dataset's float range when decided once for the whole dataset."""
    array = np.asarray(array)
    if float_range is not None and np.issubdtype(array.dtype, np.floating):
        pixels = _scale_floats(array, where, float_range)
    else:
        pixels = to_uint8(array, where)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise AttTokError(f"{where}: array of shape {array.shape} is not an image (H×W, H×W×3 or H×W×4)")
    return Image.fromarray(pixels).convert("RGB")


def as_rgb(image: Image.Image, where: str) -> Image.Image:
    """An opened image as RGB, high-bit-depth and float modes scaled (not clipped) to 8 bits."""
    if image.mode in HIGH_BIT_MODES:
        return array_to_image(np.asarray(image), where)
    return image.convert("RGB")


def open_rgb(path: Path, where: str) -> Image.Image:
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
    return as_rgb(opened, where)


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
