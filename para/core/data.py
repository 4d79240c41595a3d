"""DreamBooth subject photos: which files count, and how each is read. Training and evaluation both use these.

One rule for every file of a subject folder: a photo (a suffix Pillow knows, e.g. .jpg .png .webp .tif), litter
that operating systems and archive tools leave behind (hidden files such as `.DS_Store` and macOS `._x.jpg`,
`Thumbs.db`, `desktop.ini`, folders such as `__MACOSX/`), which is ignored, or anything else, which is refused by
name: a photo in a format Pillow cannot open must not be silently left out. One way to read a photo
(`load_rgb`): decoded in full, EXIF rotation applied, 16-bit and float grayscale scaled (not clipped) to 8 bits,
transparency flattened over white, RGB out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

# Left by operating systems and archive tools, never photos (hidden files, starting with ".", are litter too).
LITTER_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", "__macosx"})


class DataError(ValueError):
    """A data problem the user must fix: missing folder, empty subject, unreadable image."""


def image_suffixes() -> frozenset[str]:
    """File suffixes of every image format this Pillow installation registers (lower case, with the dot)."""
    Image.init()
    return frozenset(Image.registered_extensions())


def subject_dir(root: str | Path, subject: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"data root {root.resolve()} {what}; set data.root=... to the DreamBooth `dataset/` folder "
            "(git clone https://github.com/google/dreambooth)"
        )
    folder = root / subject
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"subject folder {folder} does not exist; subjects under {root}: {known}")
    return folder


def is_litter(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in LITTER_NAMES or path.is_dir()


def image_files(folder: Path) -> list[Path]:
    """The photos of a subject folder, sorted; refuses files that are neither photos nor known litter, by name."""
    suffixes = image_suffixes()
    entries = sorted(p for p in folder.iterdir() if not is_litter(p))
    strangers = [p.name for p in entries if p.suffix.lower() not in suffixes]
    if strangers:
        raise DataError(
            f"subject folder {folder} holds files that are not photos: {', '.join(strangers)}; move them out, or "
            "convert photos to a format Pillow reads here (.jpg, .png, .webp, .tif, ...; HEIC needs converting)"
        )
    if not entries:
        raise DataError(
            f"subject folder {folder} holds no images (.jpg, .png, .webp, ...); put the subject's photos there, or "
            "set data.root=... to the folder that holds them in <subject>/"
        )
    return entries


def subject_photos(root: str | Path, subject: str) -> list[Path]:
    """Every photo of `subject` under `root`: what training trains on and what evaluation compares with."""
    return image_files(subject_dir(root, subject))


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer grayscale scaled to 8 bits (Pillow's own conversion clips at 255); float
    grayscale read as [0, 1] if it fits, else as [0, 255]."""
    array = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        scale = 255.0 if array.size and array.max() <= 1.0 else 1.0
    else:  # I;16, I;16B, I;16L, I;16N, I: 16-bit data (PNG and TIFF store 16-bit grayscale so)
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), mode="L")


def load_rgb(path: Path, min_side: int = 1) -> Image.Image:
    """Open a photo as 8-bit RGB: EXIF rotation applied, any mode and bit depth converted, alpha over white."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # force decoding now, so a truncated file fails here with its name
            im = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as err:
        raise DataError(
            f"image {path} is too large to read safely ({err}); downscale it (e.g. to 4096 pixels per side)"
        ) from err
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for broken files; all mean "unreadable"
        raise DataError(
            f"cannot read image {path}: {type(err).__name__}: {err}; put back a whole copy of the photo, or move the "
            "file out of the subject folder"
        ) from err
    if min(im.size) < min_side:
        raise DataError(
            f"image {path} is {im.size[0]}x{im.size[1]}, smaller than data.min_image_side={min_side}; use a larger "
            "photo or move it out of the subject folder"
        )
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("RGB")


def photo_problems(root: str | Path, subject: str, min_side: int = 1) -> list[str]:
    """Every reason the subject's photos cannot be used (each bad file by name), without stopping at the first."""
    try:
        files = subject_photos(root, subject)
    except DataError as err:
        return [str(err)]
    problems = []
    for path in files:
        try:
            load_rgb(path, min_side)
        except DataError as err:
            problems.append(str(err))
    return problems


def center_square(im: Image.Image, size: int) -> Image.Image:
    """Center crop to a square, then resize (Lanczos) to size × size."""
    return ImageOps.fit(im, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB → (3, H, W) float in [-1, 1], the VAE's input range."""
    array = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def select_images(files: list[Path], names: list[str] | None) -> list[Path]:
    """The photos named in `names` (data.images, e.g. one photo for single-image editing), or all when None."""
    if names is None:
        return files
    by_name = {f.name: f for f in files}
    missing = [n for n in names if n not in by_name]
    if missing or not names:
        raise DataError(f"data.images={list(names)} must name photos of {files[0].parent}; found {sorted(by_name)}")
    return [by_name[n] for n in names]


def square_pixels(photos: list[Image.Image], resolution: int) -> torch.Tensor:
    """RGB photos as a (N, 3, resolution, resolution) tensor: center-cropped, resized."""
    return torch.stack([to_tensor(center_square(im, resolution)) for im in photos])


def load_images(files: list[Path], resolution: int, min_side: int = 1) -> torch.Tensor:
    """Photos as a (N, 3, resolution, resolution) tensor: read by `load_rgb`, center-cropped, resized."""
    return square_pixels([load_rgb(f, min_side) for f in files], resolution)


def load_subject_photos(
    root: str | Path, subject: str, resolution: int, min_side: int = 16, images: list[str] | None = None
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The photos of a subject (all, or those named in `images`) as a (N, 3, resolution, resolution) tensor, and
    each photo's (height, width) before cropping and resizing (SDXL's `original_size` micro-conditioning)."""
    files = select_images(subject_photos(root, subject), images)
    photos = [load_rgb(f, min_side) for f in files]
    return square_pixels(photos, resolution), [(im.height, im.width) for im in photos]


def load_subject_images(
    root: str | Path, subject: str, resolution: int, min_side: int = 16, images: list[str] | None = None
) -> torch.Tensor:
    """The photos of a subject (all, or those named in `images`) as a (N, 3, resolution, resolution) tensor."""
    return load_subject_photos(root, subject, resolution, min_side, images)[0]


def instance_prompt(template: str, token: str, class_word: str) -> str:
    return template.format(token=token, class_word=class_word)
