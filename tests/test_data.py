"""Subject photos: odd but valid images are handled, broken ones are refused with the file's name."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import DATA_ROOT
from PIL import Image

from para.core.data import DataError, load_rgb, load_subject_images


def _subject(tmp_path, images: dict[str, bytes]):
    folder = tmp_path / "data" / "thing"
    folder.mkdir(parents=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return tmp_path / "data"


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_real_subject_loads_as_normalized_square_tensor():
    pixels = load_subject_images(DATA_ROOT, "dog", 64)
    assert pixels.shape == (5, 3, 64, 64)
    assert -1.0 <= pixels.min() < 0 < pixels.max() <= 1.0


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_grayscale_cmyk_alpha_palette_become_rgb(tmp_path, mode):
    im = Image.new("RGB", (40, 30), (200, 10, 10)).convert(mode)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    root = _subject(tmp_path, {f"a.{fmt.lower()}": _encode(im, fmt)})
    pixels = load_subject_images(root, "thing", 16)
    assert pixels.shape == (1, 3, 16, 16)


def test_transparent_pixels_become_white(tmp_path):
    im = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    path = tmp_path / "t.png"
    im.save(path)
    assert np.asarray(load_rgb(path)).min() == 255


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° CW to display
    path = tmp_path / "r.jpg"
    im.save(path, exif=exif.tobytes())
    assert load_rgb(path).size == (20, 60)


def test_truncated_image_is_named(tmp_path):
    good = (DATA_ROOT / "dog" / "00.jpg").read_bytes()
    root = _subject(tmp_path, {"cut.jpg": good[: len(good) // 3]})
    with pytest.raises(DataError, match="cut.jpg"):
        load_subject_images(root, "thing", 16)


def test_non_image_file_is_named(tmp_path):
    root = _subject(tmp_path, {"notes.jpg": b"this is text, not a photo"})
    with pytest.raises(DataError, match="notes.jpg"):
        load_subject_images(root, "thing", 16)


def test_tiny_image_is_refused(tmp_path):
    root = _subject(tmp_path, {"dot.png": _encode(Image.new("RGB", (1, 1)), "PNG")})
    with pytest.raises(DataError, match=r"dot.png is 1x1"):
        load_subject_images(root, "thing", 16)


def test_empty_subject_and_missing_root(tmp_path):
    (tmp_path / "data" / "thing").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_subject_images(tmp_path / "data", "thing", 16)
    with pytest.raises(DataError, match="subjects under"):
        load_subject_images(DATA_ROOT, "unicorn", 16)
    with pytest.raises(DataError, match="data.root"):
        load_subject_images(tmp_path / "missing", "dog", 16)
