"""One decode for every path: the pixels photo search gives an image (folder index, query
file, server upload, records index) are exactly those evaluation gives the same image built
into records (`image_dataset`), for plain and awkward inputs alike."""

import io

import numpy as np
import pytest
from PIL import Image

from dualencoder.data.pipeline import image_dataset
from dualencoder.search.build import build_index
from dualencoder.search.errors import RetrievalError
from dualencoder.search.sources import decode_image, load_query_image
from dualencoder.search.uploads import decode_upload
from records.build import build_records
from records.images import ImageTooLarge, normalize_image
from records.reader import iter_records
from records.schema import RecordsError

SIZE = 64
EXIF_ORIENTATION = 0x0112


def photo(height, width, seed):
    """A photo-like uint8 image: smooth colour waves plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = np.stack([np.sin(x / rng.uniform(8, 30) + c) * 80 + np.cos(y / rng.uniform(8, 30)) * 40
                      for c in range(3)], axis=-1) + 128
    return np.clip(waves + rng.normal(0, 8, waves.shape), 0, 255).astype(np.uint8)


def encoded(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def exif_rotated(pixels):
    """JPEG bytes of `pixels` stored sideways with an EXIF orientation (6: turn 90 degrees
    clockwise to view) that makes them upright again."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    sideways = np.ascontiguousarray(np.rot90(pixels, k=1))  # counter-clockwise
    return encoded(Image.fromarray(sideways), "JPEG", quality=92, exif=exif)


def inputs():
    """name -> encoded bytes: JPEGs at sizes that take each DCT scale, PNGs (RGB, RGBA,
    palette), GIF, BMP, WebP, greyscale, EXIF-rotated, CMYK and multi-picture (MPO) JPEGs."""
    big, small = photo(450, 600, 0), photo(150, 200, 1)
    rgba = np.concatenate([small, np.full((150, 200, 1), 128, np.uint8)], axis=-1)
    return {
        "big.jpg": encoded(Image.fromarray(big), "JPEG", quality=90),
        "small.jpg": encoded(Image.fromarray(small), "JPEG", quality=90),
        "tiny.jpg": encoded(Image.fromarray(photo(40, 50, 2)), "JPEG"),
        "grey.jpg": encoded(Image.fromarray(small).convert("L"), "JPEG"),
        "plain.png": encoded(Image.fromarray(small), "PNG"),
        "alpha.png": encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.png": encoded(Image.fromarray(small).quantize(64), "PNG"),
        "anim.gif": encoded(Image.fromarray(small).quantize(128), "GIF"),
        "bitmap.bmp": encoded(Image.fromarray(small), "BMP"),
        "photo.webp": encoded(Image.fromarray(small), "WEBP", quality=90),
        "rotated.jpg": exif_rotated(photo(120, 180, 3)),
        "cmyk.jpg": encoded(Image.fromarray(small).convert("CMYK"), "JPEG", quality=92),
        "camera.jpg": encoded(Image.fromarray(small), "MPO", quality=90, save_all=True,
                              append_images=[Image.fromarray(big)]),
    }


class PixelEncoder:
    """An Encoder-protocol stand-in that keeps every image it is given."""

    image_size = SIZE

    def __init__(self):
        self.seen = []

    def fingerprint(self):
        return "pixel-encoder"

    def encode_images(self, images):
        images = np.asarray(images, np.float32)
        self.seen.extend(images)
        return images.reshape(len(images), -1)[:, :8] + 1.0

    def encode_texts(self, texts):
        return np.ones((len(texts), 8), np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The inputs as files, built into records, and the evaluation pixels of each by name."""
    root = tmp_path_factory.mktemp("decode_paths")
    files = inputs()
    for name, data in files.items():
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "photos" / name).write_bytes(data)
    (root / "captions.csv").write_text(
        "image,caption\n" + "".join(f"photos/{n},a photo named {n}\n" for n in files))
    records = root / "records"
    build_records("csv", records, path=str(root / "captions.csv"))
    names = {r["index"]: r["image_id"].rsplit("/", 1)[-1] for r in iter_records(records)}
    evaluation = {}
    for batch in image_dataset(str(records), image_size=SIZE, batch_size=5):
        for index, pixels in zip(batch["image_index"].numpy(), batch["images"].numpy()):
            evaluation[names[int(index)]] = pixels
    assert sorted(evaluation) == sorted(files)
    return {"root": root, "files": files, "records": records, "evaluation": evaluation}


def test_search_pixels_equal_evaluation_pixels(built):
    files, evaluation = built["files"], built["evaluation"]
    for name, data in files.items():
        got = decode_image(data, SIZE)
        assert got.dtype == np.float32 and got.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(got, evaluation[name], err_msg=name)
        np.testing.assert_array_equal(decode_upload(data, SIZE), evaluation[name], err_msg=name)
        path = built["root"] / "photos" / name
        np.testing.assert_array_equal(load_query_image(path, SIZE), evaluation[name])


def test_index_builds_embed_evaluation_pixels(built, tmp_path):
    """A folder index and a records index hand the encoder the evaluation pixels."""
    evaluation = built["evaluation"]
    for source in ("images", "records"):
        encoder = PixelEncoder()
        where = built["root"] / ("photos" if source == "images" else "records")
        report = build_index(encoder, tmp_path / source, progress=False, **{source: where})
        assert report.embedded == len(evaluation) and report.skipped == []
        if source == "images":
            names = sorted(evaluation)  # listed in path order
        else:
            by_index = {r["index"]: r["image_id"].rsplit("/", 1)[-1]
                        for r in iter_records(built["records"])}
            names = [by_index[i] for i in sorted(by_index)]
        for name, pixels in zip(names, encoder.seen):
            np.testing.assert_array_equal(pixels, evaluation[name], err_msg=f"{source} {name}")


def test_normalised_bytes_are_what_records_store(built):
    """Records hold the normalised bytes, which normalise to themselves: searching a records
    directory, or its photos again, decodes the very bytes evaluation decodes."""
    stored = {r["image_id"].rsplit("/", 1)[-1]: r for r in iter_records(built["records"])}
    for name, data in built["files"].items():
        prepared = normalize_image(data)
        record = stored[name]
        assert record["image_bytes"] == prepared.data, name
        assert normalize_image(prepared.data).data == prepared.data, name
        assert (record["height"], record["width"]) == (prepared.height, prepared.width)
        kept = (name in ("big.jpg", "small.jpg", "tiny.jpg", "grey.jpg", "camera.jpg")
                or name.endswith(".png"))
        assert (prepared.data == data) == kept, name
    # The rotated photo is stored upright (180 x 120), the tag gone.
    assert (stored["rotated.jpg"]["height"], stored["rotated.jpg"]["width"]) == (120, 180)


def test_awkward_inputs_become_the_expected_rgb_pixels(built):
    """EXIF rotation is applied and CMYK converted: each is close to its plain RGB original."""
    evaluation = built["evaluation"]
    upright = decode_image(encoded(Image.fromarray(photo(120, 180, 3)), "PNG"), SIZE)
    sideways_wrong = decode_image(
        encoded(Image.fromarray(np.ascontiguousarray(np.rot90(photo(120, 180, 3)))), "PNG"),
        SIZE)
    # (two JPEG generations of a noisy photo: about 5 grey levels off; sideways: about 60)
    assert np.abs(evaluation["rotated.jpg"] - upright).mean() < 10.0
    assert np.abs(evaluation["rotated.jpg"] - sideways_wrong).mean() > 30.0
    plain = decode_image(encoded(Image.fromarray(photo(150, 200, 1)), "PNG"), SIZE)
    assert np.abs(evaluation["cmyk.jpg"] - plain).mean() < 4.0
    assert np.abs(evaluation["anim.gif"] - plain).mean() < 12.0  # 128 colours


def test_bad_images_give_clear_errors(built, tmp_path):
    whole = built["files"]["small.jpg"]
    truncated = whole[: len(whole) // 2]
    for data, reason in [(truncated, r"unreadable image \(OSError: image file is truncated"),
                         (b"not an image at all", r"unreadable image \(not a recognised image "
                                                  r"format\)")]:
        with pytest.raises(ValueError, match=reason):
            decode_image(data, SIZE)
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(data)
        with pytest.raises(RetrievalError, match=f"query image {bad}: " + reason):
            load_query_image(bad, SIZE)
        (tmp_path / "c.csv").write_text("image,caption\nbad.jpg,a caption\n")
        with pytest.raises(RecordsError, match=r"bad\.jpg.*: " + reason):
            build_records("csv", tmp_path / "rec", path=str(tmp_path / "c.csv"))
    with pytest.raises(RetrievalError, match=r"not a readable photo \(damaged or truncated\)"):
        decode_upload(truncated, SIZE)
    with pytest.raises(RetrievalError, match=r"not a readable photo \(JPEG, PNG"):
        decode_upload(b"not an image at all", SIZE)
    # bytes read from records are decoded as stored; damage there is named too
    with pytest.raises(ValueError, match=r"unreadable image \(.*JPEG"):
        decode_image(truncated, SIZE, stored=True)
    # a header claiming too many pixels is refused before decoding
    with pytest.raises(ImageTooLarge, match=r"200x150 pixels; at most 0\.001 megapixels"):
        decode_image(whole, SIZE, max_pixels=1000)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.jpg").write_bytes(whole)
    (photos / "broken.jpg").write_bytes(truncated)
    report = build_index(PixelEncoder(), tmp_path / "index", images=photos, progress=False)
    assert report.embedded == 1
    assert [s["path"] for s in report.skipped] == ["broken.jpg"]
    assert report.skipped[0]["error"].startswith("unreadable image (OSError: image file is "
                                                 "truncated")
