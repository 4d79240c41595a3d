"""DreamBooth subject photos: found, checked, made RGB, center-cropped and resized to the model resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class DataError(ValueError):
    """A data problem the user must fix: missing folder, empty subject, unreadable image."""


def subject_dir(root: str | Path, subject: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data root {root.resolve()} does not exist; set data.root=... to the DreamBooth `dataset/` folder "
            "(git clone https://github.com/google/dreambooth)"
        )
    folder = root / subject
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"subject folder {folder} does not exist; subjects under {root}: {known}")
    return folder


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"subject folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_rgb(path: Path, min_side: int = 1) -> Image.Image:
    """Open a photo as 8-bit RGB: EXIF rotation applied, grayscale/CMYK/palette converted, alpha over white."""
    try:
        with Image.open(path) as im:
            im.load()  # force decoding now, so a truncated file fails here with its name
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    if min(im.size) < min_side:
        raise DataError(f"image {path} is {im.size[0]}x{im.size[1]}, smaller than data.min_image_side={min_side}")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("RGB")


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


def load_subject_photos(
    root: str | Path, subject: str, resolution: int, min_side: int = 16, images: list[str] | None = None
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The photos of a subject (all, or those named in `images`) as a (N, 3, resolution, resolution) tensor, and
    each photo's (height, width) before cropping and resizing (SDXL's `original_size` micro-conditioning)."""
    files = select_images(image_files(subject_dir(root, subject)), images)
    photos = [load_rgb(f, min_side) for f in files]
    pixels = torch.stack([to_tensor(center_square(im, resolution)) for im in photos])
    return pixels, [(im.height, im.width) for im in photos]


def load_subject_images(
    root: str | Path, subject: str, resolution: int, min_side: int = 16, images: list[str] | None = None
) -> torch.Tensor:
    """The photos of a subject (all, or those named in `images`) as a (N, 3, resolution, resolution) tensor."""
    return load_subject_photos(root, subject, resolution, min_side, images)[0]


def instance_prompt(template: str, token: str, class_word: str) -> str:
    return template.format(token=token, class_word=class_word)
