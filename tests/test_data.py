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


def _png16(gray: np.ndarray) -> bytes:
    return _encode(Image.fromarray(gray.astype(np.uint16)), "PNG")


def test_10_training_and_evaluation_read_the_same_files_the_same_way(tmp_path):
    """Item 10: evaluation skipped .webp photos, counted macOS `._x.jpg` litter, and flattened transparency onto
    black where training used white."""
    from eval.score import load_image, real_photo_paths
    from para.core.data import image_files, subject_dir

    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    clear.paste((200, 10, 10, 255), (8, 8, 24, 24))
    root = _subject(
        tmp_path,
        {
            "a.png": _encode(clear, "PNG"),
            "b.webp": _encode(Image.new("RGB", (32, 32), (0, 90, 0)), "WEBP", lossless=True),
            "._a.png": b"\x00\x05\x16\x07 AppleDouble metadata, not a photo",
            ".DS_Store": b"\x00\x00\x00\x01Bud1",
            "Thumbs.db": b"\xd0\xcf\x11\xe0",
        },
    )
    files = image_files(subject_dir(root, "thing"))  # what training reads
    assert [f.name for f in files] == ["a.png", "b.webp"] == [f.name for f in real_photo_paths(root, "thing")]
    for f in files:
        assert np.array_equal(np.asarray(load_image(f)), np.asarray(load_rgb(f))), f.name
    assert np.asarray(load_rgb(root / "thing" / "a.png"))[0, 0].tolist() == [255, 255, 255]
    assert load_subject_images(root, "thing", 16).shape == (2, 3, 16, 16)


def test_10_sixteen_bit_and_float_grayscale_keep_their_tones(tmp_path):
    """Pillow's own conversion clips 16-bit values at 255: mid-grey 32768 came out white."""
    path = tmp_path / "g.png"
    path.write_bytes(_png16(np.array([[0, 32768, 65535, 257 * 40]])))
    assert np.asarray(load_rgb(path))[0, :, 0].tolist() == [0, 128, 255, 40]
    tif = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tif)
    assert np.asarray(load_rgb(tif))[0, :, 0].tolist() == [0, 128, 255]


def test_10_files_that_are_not_photos_are_refused_by_name(tmp_path):
    root = _subject(tmp_path, {"00.jpg": (DATA_ROOT / "dog" / "00.jpg").read_bytes(), "IMG_1.heic": b"ftypheic"})
    with pytest.raises(DataError, match=r"not photos: IMG_1.heic"):
        load_subject_images(root, "thing", 16)


def test_10_a_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000: Pillow refuses to decode
    with pytest.raises(DataError, match="huge.png is too large"):
        load_rgb(path)
