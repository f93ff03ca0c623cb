"""The image-folder loader: class mapping, stratified split, resize + crop, stats, errors;
every file decoded up front, 16-bit, EXIF, transparency, torchvision's extensions, the
validation folder, the verified-files record and the decoded cache."""

import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_jax.data import MissingSplit, image_folder
from cnn_jax.data.image_folder import ImageFolderSource, load_image_folder

# One solid colour per class, so an example's class can be read from its pixels.
COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "zebra": (40, 40, 220)}
COUNTS = {"cat": 5, "dog": 6, "zebra": 3}
EXTS = ("png", "jpg", "JPEG")  # upper case too: extensions are matched case-insensitively


def write_class(folder, colour, n, size=(12, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, colour).save(folder / f"{i}.{EXTS[i % 3]}")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own cache directory (the verified-files record, decoded arrays)."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(path))
    monkeypatch.setattr(image_folder, "_reported", set())
    return path


@pytest.fixture
def root(tmp_path):
    for name, colour in COLOURS.items():
        write_class(tmp_path / "animals" / name, colour, COUNTS[name])
    return tmp_path / "animals"


def class_of(image, class_names):
    """The class whose colour is nearest the image's mean colour."""
    mean = image.reshape(-1, image.shape[-1]).mean(axis=0)
    return min(class_names, key=lambda c: np.abs(mean - COLOURS[c]).sum())


def test_class_mapping_follows_sorted_folders_and_pixels(root):
    ds = load_image_folder("train", str(root), image_size=8)
    assert ds.class_names == ("cat", "dog", "zebra") and ds.num_classes == 3
    assert ds.name == "image_folder" and ds.image_shape == (8, 8, 3)
    for i in range(len(ds)):
        ex = ds.source[i]
        assert ex["label"].dtype == np.int32
        name = ds.class_names[ex["label"]]
        assert class_of(ex["image"], ds.class_names) == name
        assert ds.source.paths[i].split("/")[-2] == name


def test_split_sizes_are_stratified(root):
    # Per class round(0.2 * n), at least 1: cat 5 -> 1, dog 6 -> 1, zebra 3 -> 1.
    train, test = (load_image_folder(s, str(root), image_size=8) for s in ("train", "test"))
    assert np.bincount(test.source.labels).tolist() == [1, 1, 1]
    assert np.bincount(train.source.labels).tolist() == [4, 5, 2]
    # Half-up rounding at 0.5: cat 2.5 -> 3, dog 3, zebra 1.5 -> 2.
    half = load_image_folder("test", str(root), image_size=8, test_fraction=0.5)
    assert np.bincount(half.source.labels).tolist() == [3, 3, 2]


def test_split_is_deterministic_disjoint_and_complete(root):
    train = load_image_folder("train", str(root), image_size=8).source.paths
    test = load_image_folder("test", str(root), image_size=8).source.paths
    assert load_image_folder("test", str(root), image_size=8).source.paths == test
    assert not set(train) & set(test)
    every = {str(p) for p in root.glob("*/*")}
    assert set(train) | set(test) == every and len(every) == sum(COUNTS.values())


def test_split_seed_changes_the_split(root):
    splits = {load_image_folder("test", str(root), image_size=8, split_seed=s).source.paths
              for s in range(5)}
    assert len(splits) > 1


def test_train_test_subfolders_are_used_as_given(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for name in ("cat", "dog"):
            write_class(tmp_path / split / name, COLOURS[name], n)
    for split, n in (("train", 4), ("test", 2)):
        # test_fraction is unused with this layout.
        ds = load_image_folder(split, str(tmp_path), image_size=8, test_fraction=0.9)
        assert ds.class_names == ("cat", "dog")
        assert np.bincount(ds.source.labels).tolist() == [n, n]
        assert all(f"/{split}/" in p for p in ds.source.paths)
        assert all(class_of(ds.source[i]["image"], ds.class_names) == ds.class_names[
            ds.source[i]["label"]] for i in range(len(ds)))


def test_train_test_subfolders_with_different_classes(tmp_path):
    write_class(tmp_path / "train" / "cat", COLOURS["cat"], 2)
    write_class(tmp_path / "train" / "dog", COLOURS["dog"], 2)
    write_class(tmp_path / "test" / "cat", COLOURS["cat"], 2)
    write_class(tmp_path / "test" / "zebra", COLOURS["zebra"], 2)
    with pytest.raises(ValueError, match=r"only in train: \['dog'\]; only in test: \['zebra'\]"):
        load_image_folder("train", str(tmp_path))
    # An empty class folder in a split folder is named too.
    for f in (tmp_path / "test" / "zebra").iterdir():
        f.unlink()
    (tmp_path / "test" / "zebra").rename(tmp_path / "test" / "dog")
    with pytest.raises(ValueError, match=r"no images.*test/dog"):
        load_image_folder("test", str(tmp_path))


def reference(path, size, box):
    """PIL alone: resize to `size` (bilinear), then crop `box`, worked out by hand."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize(size, Image.BILINEAR).crop(box))


def test_resize_then_center_crop(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    wide, tall = tmp_path / "a" / "wide.png", tmp_path / "a" / "tall.png"
    Image.fromarray(rng.integers(0, 256, (20, 40, 3), np.uint8)).save(wide)  # 40 wide, 20 high
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), np.uint8)).save(tall)  # 20 wide, 30 high
    for image_size in (16, (12, 16)):
        ds = load_image_folder("train", str(tmp_path), image_size=image_size, test_fraction=0.5)
        shape = (16, 16, 3) if image_size == 16 else (12, 16, 3)
        assert ds.image_shape == shape
        assert ds.source[0]["image"].shape == shape and ds.source[0]["image"].dtype == np.uint8
    # Shorter side to 16, then the centre 16x16: 40x20 -> 32x16, 20x30 -> 16x24.
    source = ImageFolderSource([wide, tall], [0, 0], (16, 16), 3)
    np.testing.assert_array_equal(source[0]["image"], reference(wide, (32, 16), (8, 0, 24, 16)))
    np.testing.assert_array_equal(source[1]["image"], reference(tall, (16, 24), (0, 4, 16, 20)))
    # A (height, width) size: the 40x20 image is scaled to cover 16 wide x 12 high: 24x12.
    source = ImageFolderSource([wide], [0], (12, 16), 3)
    np.testing.assert_array_equal(source[0]["image"], reference(wide, (24, 12), (4, 0, 20, 12)))


def test_grayscale(root):
    ds = load_image_folder("train", str(root), image_size=(6, 10), channels=1)
    assert ds.image_shape == (6, 10, 1) and len(ds.mean) == len(ds.std) == 1
    for i in range(len(ds)):
        ex = ds.source[i]
        assert ex["image"].shape == (6, 10, 1) and ex["image"].dtype == np.uint8
        grey = Image.new("RGB", (1, 1), COLOURS[ds.class_names[ex["label"]]]).convert("L")
        assert abs(ex["image"].mean() - grey.getpixel((0, 0))) <= 3  # JPEG is near, not exact


def test_mean_std_from_the_known_colours_of_train(root):
    train = load_image_folder("train", str(root), image_size=8)
    colours = np.array([COLOURS[train.class_names[y]] for y in train.source.labels]) / 255
    np.testing.assert_allclose(train.mean, colours.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(train.std, colours.std(axis=0), atol=0.01)
    test = load_image_folder("test", str(root), image_size=8)
    assert (test.mean, test.std) == (train.mean, train.std)


def test_non_image_and_hidden_files_are_ignored(root):
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"garbage")
    (root / ".cache").mkdir()
    write_class(root / ".cache", (0, 0, 0), 2)
    (root / "README").write_text("a file in root")
    train = load_image_folder("train", str(root), image_size=8)
    test = load_image_folder("test", str(root), image_size=8)
    assert train.class_names == ("cat", "dog", "zebra")
    assert len(train) + len(test) == sum(COUNTS.values())


def test_source_pickles(root):
    source = load_image_folder("test", str(root), image_size=8).source
    again = pickle.loads(pickle.dumps(source))
    assert len(again) == len(source)
    for i in range(len(source)):
        a, b = source[i], again[i]
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["label"] == b["label"]


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder("train", str(tmp_path / "nowhere"))


def test_empty_root_says_which_option_to_set():
    with pytest.raises(ValueError, match=r"needs a root folder.*--config.dataset.root="):
        load_image_folder("train", "")


def test_empty_class_folder_is_named(root):
    (root / "emu").mkdir()
    with pytest.raises(ValueError, match=r"no images.*emu"):
        load_image_folder("train", str(root))


def test_no_images(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")  # images must sit in class folders
    with pytest.raises(ValueError, match=r"No class folders in .*<class_name>"):
        load_image_folder("train", str(tmp_path))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"No images \(.jpg .jpeg .png .* .gif\) in any class"):
        load_image_folder("train", str(tmp_path))


def test_unreadable_files_are_all_reported_at_load(root):
    (root / "cat" / "x.png").write_bytes(b"not a png at all")
    (root / "zebra" / "y.jpg").write_bytes(b"\xff\xd8 nor a jpeg")
    with pytest.raises(ValueError, match=r"2 unreadable") as err:
        load_image_folder("train", str(root))
    assert str(root / "cat" / "x.png") in str(err.value)
    assert str(root / "zebra" / "y.jpg") in str(err.value)


def test_unreadable_file_without_verify_fails_at_access(tmp_path):
    for split in ("train", "test"):
        write_class(tmp_path / split / "cat", COLOURS["cat"], 2)
    bad = tmp_path / "test" / "cat" / "x.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="x.png"):
        load_image_folder("test", str(tmp_path))
    ds = load_image_folder("test", str(tmp_path), image_size=8, verify=False, cache="none")
    i = ds.source.paths.index(str(bad))
    assert len(ds) == 3 and all(ds.source[j]["image"].shape == (8, 8, 3)  # the good ones read
                                for j in range(3) if j != i)
    with pytest.raises(ValueError, match=f"Cannot decode image file {bad}"):
        ds.source[i]


@pytest.mark.parametrize("options,match", [
    ({"split": "val"}, r"Unknown split 'val'.*train, test, validation"),
    ({"channels": 2}, r"channels must be 1 \(grayscale\), 3 \(RGB\) or 4 \(RGBA\), got 2"),
    ({"background": "no such colour"}, r"background must be a colour name .* got 'no such"),
    ({"background": (255, 0)}, r"background must be .*\(r, g, b\) triple"),
    ({"background": (256, 0, 0)}, r"background must be"),
    ({"cache": "ram"}, r"Unknown cache 'ram'.*auto, memory, disk, none"),
    ({"image_size": 0}, r"image_size must be a positive int"),
    ({"image_size": (8, 8, 3)}, r"image_size must be .*\(height, width\)"),
    ({"test_fraction": 1.0}, r"test_fraction must lie in \(0, 1\), got 1.0"),
    ({"test_fraction": 0}, r"test_fraction must lie in \(0, 1\)"),
])
def test_bad_arguments(root, options, match):
    options = {"split": "train", "root": str(root), **options}
    with pytest.raises(ValueError, match=match):
        load_image_folder(options.pop("split"), **options)


def test_single_image_classes_give_an_empty_test_split(tmp_path):
    for name in ("cat", "dog"):
        write_class(tmp_path / name, COLOURS[name], 1)
    with pytest.warns(UserWarning, match=r"'cat', 'dog' have a single image"):
        assert len(load_image_folder("train", str(tmp_path), image_size=8)) == 2
    with pytest.raises(ValueError, match=r"'test' split of .* is empty"), pytest.warns(UserWarning):
        load_image_folder("test", str(tmp_path), image_size=8)


# --- Every file decoded up front -------------------------------------------------------------

def truncated(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def photo(size=(40, 60), seed=0):
    """A noisy picture, so that JPEG/PNG data are long enough to truncate meaningfully."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)


def test_truncated_and_corrupt_files_are_all_found_before_training(root):
    jpeg, png = root / "cat" / "cut.jpg", root / "dog" / "nested" / "cut.png"
    png.parent.mkdir()
    Image.fromarray(photo()).save(jpeg, quality=90)
    Image.fromarray(photo(seed=1)).save(png)
    truncated(jpeg)
    truncated(png)
    (root / "zebra" / "junk.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with Image.open(jpeg) as img:
        img.verify()  # PIL's verify() lets the truncated JPEG through: a full decode does not
    # Whichever split is asked for, every split's files are checked, all named in one error.
    for split, cache in (("train", "auto"), ("test", "none")):
        with pytest.raises(ValueError, match=r"3 unreadable image file\(s\)") as err:
            load_image_folder(split, str(root), image_size=8, cache=cache)
        for bad in (jpeg, png, root / "zebra" / "junk.jpg"):
            assert str(bad.resolve()) in str(err.value) or str(bad) in str(err.value)
        assert "truncated" in str(err.value)


def test_verified_files_are_not_decoded_again_until_they_change(root, capsys):
    load_image_folder("train", str(root), image_size=8, cache="none")
    assert "checking that every file decodes: 14/14 files" in capsys.readouterr().err
    load_image_folder("test", str(root), image_size=8, cache="none")
    assert "checking" not in capsys.readouterr().err  # the other split: nothing left to check
    load_image_folder("train", str(root), image_size=8, cache="none")
    assert "checking" not in capsys.readouterr().err  # a resumed run: nothing to check
    changed = root / "cat" / "0.png"
    Image.new("RGB", (12, 8), (0, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))  # another mtime (and here another size)
    load_image_folder("train", str(root), image_size=8, cache="none")
    assert "checking that every file decodes: 1/1 files" in capsys.readouterr().err


# --- Pixel values: 16-bit, EXIF, transparency --------------------------------------------------

def write_png16(path, array):
    """A 16-bit PNG written by hand (not by Pillow): (H, W) grey or (H, W, 3) RGB uint16."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", w, h, 16, 0 if array.ndim == 2 else 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def only_image(tmp_path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class of one image: none goes to test
        ds = load_image_folder("train", str(tmp_path), **options)
    assert len(ds) == 1
    return ds.source[0]["image"]


def test_16_bit_png_ramp_loads_as_the_8_bit_ramp(tmp_path):
    ramp = np.arange(256).reshape(16, 16)
    write_png16(tmp_path / "a" / "grey.png", (ramp * 257).astype(np.uint16))  # 0 ... 65535
    grey = only_image(tmp_path, image_size=16, channels=1)
    np.testing.assert_array_equal(grey[..., 0], ramp)
    np.testing.assert_array_equal(only_image(tmp_path, image_size=16), np.stack([ramp] * 3, -1))
    # Values between the steps round to the nearest 8-bit level: v * 255 / 65535.
    write_png16(tmp_path / "a" / "grey.png", np.array([[0, 128, 129, 32767, 32768, 65535]],
                                                      np.uint16))
    np.testing.assert_array_equal(only_image(tmp_path, image_size=(1, 6), channels=1)[0, :, 0],
                                  [0, 0, 1, 127, 128, 255])
    rgb = np.stack([ramp, ramp[::-1], 255 - ramp], -1)
    write_png16(tmp_path / "a" / "grey.png", (rgb * 257).astype(np.uint16))
    np.testing.assert_array_equal(only_image(tmp_path, image_size=16), rgb)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 16 high x 32 wide: left half red, right half blue, a green top-left corner.
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16] = (255, 0, 0)
    stored[:, 16:] = (0, 0, 255)
    stored[:8, :8] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns the stored picture 90 degrees clockwise
    (tmp_path / "a").mkdir()
    Image.fromarray(stored).save(tmp_path / "a" / "phone.jpg", quality=95, subsampling=0,
                                 exif=exif)
    upright = np.rot90(stored, k=-1)  # what the person who took it sees: 32 high x 16 wide
    image = only_image(tmp_path, image_size=(32, 16))
    assert np.abs(image.astype(int) - upright).max() < 40  # JPEG: near, not exact
    assert image[:8, 8:].mean(axis=(0, 1)).round().tolist() == pytest.approx([0, 255, 0], abs=8)
    sideways = only_image(tmp_path, image_size=(32, 16), exif_transpose=False)
    assert np.abs(sideways.astype(int) - upright).max() > 200


def write_rgba(path, pixels, mode="RGBA"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(pixels, np.uint8), mode).save(path)


def test_transparency_is_composited_on_the_background(tmp_path):
    # Alpha 0, 51 (20%), 153 (60%), 255: every composite is a whole number, worked out by hand.
    write_rgba(tmp_path / "a" / "x.png", [[(200, 100, 0, 0), (200, 100, 0, 51),
                                          (200, 100, 0, 153), (200, 100, 0, 255)]])
    on_white = [[255, 255, 255], [244, 224, 204], [222, 162, 102], [200, 100, 0]]
    np.testing.assert_array_equal(only_image(tmp_path, image_size=(1, 4))[0], on_white)
    on_black = [[0, 0, 0], [40, 20, 0], [120, 60, 0], [200, 100, 0]]
    np.testing.assert_array_equal(
        only_image(tmp_path, image_size=(1, 4), background="black")[0], on_black)
    np.testing.assert_array_equal(
        only_image(tmp_path, image_size=(1, 4), background=(0, 0, 255))[0],
        [[0, 0, 255], [40, 20, 204], [120, 60, 102], [200, 100, 0]])
    kept = only_image(tmp_path, image_size=(1, 4), channels=4)
    np.testing.assert_array_equal(kept[0, :, 3], [0, 51, 153, 255])
    np.testing.assert_array_equal(kept[0, 1:, :3], [[200, 100, 0]] * 3)
    # Grey + alpha (LA), and a palette image with a transparent index.
    write_rgba(tmp_path / "a" / "x.png", [[(100, 0), (100, 51), (100, 255)]], "LA")
    np.testing.assert_array_equal(only_image(tmp_path, image_size=(1, 3), channels=1)[0, :, 0],
                                  [255, 224, 100])
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "a" / "x.png", transparency=0)
    np.testing.assert_array_equal(only_image(tmp_path, image_size=(1, 2))[0],
                                  [[255, 255, 255], [40, 50, 60]])
    # An opaque image read with channels=4 gets alpha 255.
    Image.new("RGB", (2, 1), (1, 2, 3)).save(tmp_path / "a" / "x.png")
    np.testing.assert_array_equal(only_image(tmp_path, image_size=(1, 2), channels=4)[0],
                                  [[1, 2, 3, 255]] * 2)


# --- What is read: torchvision's extensions, nested folders, validation/ ----------------------

LOSSLESS = {"png": {}, "ppm": {}, "bmp": {}, "tif": {}, "TIFF": {}, "webp": {"lossless": True},
            "gif": {}}


def test_reads_what_torchvision_reads_and_says_what_it_skipped(tmp_path, capsys):
    for name, colour in (("cat", COLOURS["cat"]), ("dog", COLOURS["dog"])):
        folder = tmp_path / name
        for i, (ext, options) in enumerate(LOSSLESS.items()):
            sub = folder / ("deep/er" if i % 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), colour).save(sub / f"{i}.{ext}", **options)
        Image.new("RGB", (4, 4), colour).save(folder / "a.jpeg")
        Image.new("L", (4, 4), 90).save(folder / "deep" / "grey.pgm")
        (folder / "notes.txt").write_text("x")
        (folder / ".DS_Store").write_bytes(b"x")
        (folder / ".thumbs").mkdir()
        Image.new("RGB", (4, 4)).save(folder / ".thumbs" / "t.png")
    (tmp_path / "labels.csv").write_text("x")
    train = load_image_folder("train", str(tmp_path), image_size=4, test_fraction=0.1)
    test = load_image_folder("test", str(tmp_path), image_size=4, test_fraction=0.1)
    err = capsys.readouterr().err
    assert ("skipped 7 files: 4 hidden; 2 not images (.txt); 1 outside class folders." in err
            and "2 classes, train 16, test 2 images" in err)
    paths = set(train.source.paths + test.source.paths)
    assert len(paths) == 18
    for ds in (train, test):
        for i in range(len(ds)):
            image, label = ds.source[i]["image"], ds.source[i]["label"]
            if ds.source.paths[i].endswith(".pgm"):
                assert (image == 90).all()
            elif not ds.source.paths[i].endswith(".jpeg"):
                assert (image == COLOURS[ds.class_names[label]]).all(), ds.source.paths[i]


@pytest.mark.slow  # importing torch takes 10-20 s on 2 shared cores
def test_the_same_files_as_torchvision_image_folder(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    extensions = torchvision.datasets.folder.IMG_EXTENSIONS
    assert set(image_folder.EXTENSIONS) == set(extensions) | {".gif"}
    for i, ext in enumerate(extensions + (".gif", ".JPG", ".txt", ".npy")):
        sub = tmp_path / ("cat", "dog")[i % 2] / ("nested" if i % 3 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(sub / f"{i}{ext}", format="PNG")
    ours = {p for s in ("train", "test")
            for p in load_image_folder(s, str(tmp_path), image_size=4).source.paths}
    samples = torchvision.datasets.ImageFolder(str(tmp_path), allow_empty=True).samples
    assert {p for p, _ in samples} == {p for p in ours if not p.endswith(".gif")}
    assert len(ours) == len(extensions) + 2


def test_validation_folder_is_the_validation_split(tmp_path):
    for split, n in (("train", 4), ("test", 2), ("validation", 3)):
        for name in ("cat", "dog"):
            write_class(tmp_path / split / name, COLOURS[name], n)
    ds = load_image_folder("validation", str(tmp_path), image_size=8)
    assert np.bincount(ds.source.labels).tolist() == [3, 3]
    assert all("/validation/" in p for p in ds.source.paths)
    assert ds.mean == load_image_folder("train", str(tmp_path), image_size=8).mean
    (tmp_path / "validation" / "dog").rename(tmp_path / "validation" / "emu")
    with pytest.raises(ValueError, match=r"only in train: \['dog'\]; only in validation: \['emu"):
        load_image_folder("train", str(tmp_path), image_size=8)
    for f in (tmp_path / "validation").rglob("*.*"):
        f.unlink()
    for d in sorted((tmp_path / "validation").rglob("*"), reverse=True):
        d.rmdir()
    (tmp_path / "validation").rmdir()
    with pytest.raises(MissingSplit, match=r"no 'validation' split: it has train, test"):
        load_image_folder("validation", str(tmp_path), image_size=8)


def test_one_folder_has_no_validation_split(root):
    with pytest.raises(MissingSplit, match="no 'validation' split"):
        load_image_folder("validation", str(root), image_size=8)


# --- The decoded cache --------------------------------------------------------------------------

def test_memory_and_disk_caches_give_the_lazy_pixels(root, cache_dir, monkeypatch, capsys):
    Image.fromarray(photo((30, 50))).save(root / "cat" / "photo.png")
    lazy = load_image_folder("train", str(root), image_size=10, cache="none").source
    assert type(lazy) is ImageFolderSource
    for cache in ("memory", "auto", "disk"):
        source = load_image_folder("train", str(root), image_size=10, cache=cache).source
        assert source.images.shape == (len(lazy), 10, 10, 3) and source.paths == lazy.paths
        for i in range(len(lazy)):
            np.testing.assert_array_equal(source[i]["image"], lazy[i]["image"])
            assert source[i]["label"] == lazy[i]["label"]
    arrays = sorted((cache_dir / "arrays").glob("*.npy"))
    assert len(arrays) == 1
    # The next run reads the array back and decodes nothing.
    monkeypatch.setattr(image_folder, "decode", lambda *a, **k: 1 / 0)
    capsys.readouterr()
    source = load_image_folder("train", str(root), image_size=10, cache="disk").source
    assert "read the decoded train split from" in capsys.readouterr().err
    np.testing.assert_array_equal(source.images, np.load(arrays[0]))
    monkeypatch.undo()
    monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(cache_dir))
    # A changed file changes the key: decoded again, the stale array deleted.
    Image.fromarray(photo((30, 50), seed=5)).save(root / "cat" / "photo.png")
    source = load_image_folder("train", str(root), image_size=10, cache="disk").source
    i = source.paths.index(str(root / "cat" / "photo.png"))
    np.testing.assert_array_equal(source[i]["image"], ImageFolderSource(
        [root / "cat" / "photo.png"], [0], (10, 10), 3)[0]["image"])
    assert sorted((cache_dir / "arrays").glob("*.npy")) != arrays
    assert len(list((cache_dir / "arrays").glob("*train*.npy"))) == 1
    # Another size is another array.
    load_image_folder("train", str(root), image_size=6, cache="disk")
    assert len(list((cache_dir / "arrays").glob("*.npy"))) == 2


def test_a_truncated_jpeg_in_the_test_split_stops_the_run_before_the_first_step(tmp_path):
    from cnn_jax.train.loop import train_and_evaluate
    from experiments.configs import image_folder as config_module
    for split, n in (("train", 4), ("test", 2)):
        for name in ("cat", "dog"):
            write_class(tmp_path / "images" / split / name, COLOURS[name], n)
    bad = tmp_path / "images" / "test" / "dog" / "cut.jpg"  # read first by the evaluation
    Image.fromarray(photo()).save(bad)
    truncated(bad)
    config = config_module.get_config()
    config.dataset.root = str(tmp_path / "images")
    config.batch_size = 4
    with pytest.raises(ValueError, match=r"1 unreadable image file(?s:.)*cut.jpg.*truncated"):
        train_and_evaluate(config, str(tmp_path / "run"))
    written = {p.name for p in (tmp_path / "run").rglob("*")}
    assert not written & {"steps.jsonl", "metrics.jsonl", "checkpoints"}


def test_auto_cache_reads_files_when_the_split_is_too_big_for_memory(root, monkeypatch, capsys):
    monkeypatch.setattr(image_folder, "AUTO_MEMORY_BYTES", 8 * 8 * 3 * 10)  # train has 11
    assert type(load_image_folder("train", str(root), image_size=8).source) is ImageFolderSource
    assert "more than cache='auto' keeps in memory" in capsys.readouterr().err
    test = load_image_folder("test", str(root), image_size=8).source  # 3 images fit
    assert type(test) is image_folder.CachedImageFolderSource


@pytest.mark.slow  # a subprocess importing JAX and grain: 10-30 s on 2 shared cores
def test_cache_benchmark_smoke(tmp_path):
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "benchmarks/image_folder_cache.py", "--images", "20", "--epochs", "1",
         "--image_size", "16", "--batch_size", "4", "--dir", str(tmp_path / "photos")],
        cwd=repo, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CNN_JAX_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines()
            if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["cache", "none", "memory", "disk"]
    assert len(list((tmp_path / "photos").rglob("*.jpg"))) == 20
