"""The image-folder loader: class mapping, stratified split, resize + crop, stats, errors."""

import pickle

import numpy as np
import pytest
from PIL import Image

from cnn_jax.data.image_folder import ImageFolderSource, load_image_folder

# One solid colour per class, so an example's class can be read from its pixels.
COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "zebra": (40, 40, 220)}
COUNTS = {"cat": 5, "dog": 6, "zebra": 3}
EXTS = ("png", "jpg", "JPEG")  # upper case too: extensions are matched case-insensitively


def write_class(folder, colour, n, size=(12, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, colour).save(folder / f"{i}.{EXTS[i % 3]}")


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
    with pytest.raises(ValueError, match=r"No images \(.png, .jpg, .jpeg\) in any class folder"):
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
    ds = load_image_folder("test", str(tmp_path), image_size=8, verify=False)
    i = ds.source.paths.index(str(bad))
    assert len(ds) == 3 and all(ds.source[j]["image"].shape == (8, 8, 3)  # the good ones read
                                for j in range(3) if j != i)
    with pytest.raises(ValueError, match=f"Cannot decode image file {bad}"):
        ds.source[i]


@pytest.mark.parametrize("options,match", [
    ({"split": "validation"}, r"Unknown split 'validation'.*train, test"),
    ({"channels": 2}, r"channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"),
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
    assert len(load_image_folder("train", str(tmp_path), image_size=8)) == 2
    with pytest.raises(ValueError, match=r"'test' split of .* is empty"):
        load_image_folder("test", str(tmp_path), image_size=8)
