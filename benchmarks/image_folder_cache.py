"""What the image-folder cache saves: photos (JPEG, 400 wide x 533 high) resized to 64 px.

Run from the repository root:

    python benchmarks/image_folder_cache.py --images 600 --epochs 2

It writes `--images` photo-like JPEGs (smooth colour fields with grain, quality 90, 10 classes)
into `--dir` (default /tmp/cnn_jax_photos; kept and reused), then for each cache setting
times, on a cold cache directory:
  load     `load_image_folder("train", ...)`: the up-front check of every file (and, with a
           cache, the decode + resize of the split); for 'disk' a second load too, which reads
           the array back (what a resumed run pays);
  epoch    reading whole epochs through the training pipeline (`train_iterator`, batch 64,
           2 threads, as `config.input_threads`), images/s: the host's share of every epoch.
On a CPU the input threads share the cores with the train step, so every second an epoch
spends decoding is taken from training.

`--digit_photos DIR` instead writes the set the image-folder configs are checked on (and
exits): scikit-learn's 1,797 8x8 digits as 96x96 colour JPEGs, each digit in a random tint,
size and place, darker or lighter than its uneven random-colour background, with grain,
`DIR/<digit>/<i>.jpg`. `--digit_pngs DIR` writes the digits as they are (grey 32x32 PNGs).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cnn_jax.data import image_folder, steps_per_epoch, train_iterator  # noqa: E402


def write_photos(folder: str, n: int, size=(533, 400), classes: int = 10) -> None:
    """n JPEGs of `size` (height, width); skipped when the folder already holds them."""
    if sum(len(f) for _, _, f in os.walk(folder)) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (size[0] // 20, size[1] // 20, 3), np.uint8))
        smooth = np.asarray(coarse.resize(size[::-1], Image.BICUBIC), np.int16)
        grain = rng.integers(-12, 13, smooth.shape, np.int16)
        path = os.path.join(folder, f"class{i % classes}", f"{i}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_digit_pngs(folder: str, size: int = 32) -> None:
    """The digits as they are: grey, `size` x `size` (bilinear), `DIR/<digit>/<i>.png`."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        path = os.path.join(folder, str(label), f"{i}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((size, size),
                                                                     Image.BILINEAR).save(path)


def write_digit_photos(folder: str, size: int = 96) -> None:
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(0)
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        side = int(rng.integers(size // 2, size * 7 // 8))
        ink = np.asarray(Image.fromarray((image * 255 / 16).astype(np.uint8))
                         .resize((side, side), Image.BICUBIC), np.float32)[..., None] / 255
        top, left = rng.integers(0, size - side + 1, 2)
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8))
        field = np.asarray(coarse.resize((size, size), Image.BICUBIC), np.float32)
        photo = 0.3 * field + 0.7 * rng.integers(0, 256, 3)  # a tinted, uneven background
        # The ink: a random tint, darker or lighter than the background (as an object in a
        # photo differs from what is behind it).
        dark = photo.mean() > 128
        colour = rng.integers(0, 96, 3) + (0 if dark else 160)
        window = photo[top:top + side, left:left + side]
        photo[top:top + side, left:left + side] = window * (1 - ink) + colour * ink
        photo += rng.normal(0, 8, photo.shape)
        path = os.path.join(folder, str(label), f"{i}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(path, quality=90)


def epoch_rate(ds, epochs: int, batch_size: int = 64, threads: int = 2) -> float:
    it = train_iterator(ds, batch_size, seed=0, num_epochs=epochs, num_threads=threads)
    steps = epochs * steps_per_epoch(ds, batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--dir", default="/tmp/cnn_jax_photos")
    parser.add_argument("--digit_photos", default="", help="write the digit photos here, exit")
    parser.add_argument("--digit_pngs", default="", help="write the plain digits here, exit")
    args = parser.parse_args()
    if args.digit_photos or args.digit_pngs:
        if args.digit_photos:
            write_digit_photos(args.digit_photos)
        if args.digit_pngs:
            write_digit_pngs(args.digit_pngs)
        return
    write_photos(args.dir, args.images)
    mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.dir) for f in fs)
    print(f"{args.images} JPEGs of 400x533 ({mb / 2**20:.1f} MiB) -> {args.image_size} px; "
          f"{image_folder.THREADS} decoding threads; {os.cpu_count()} cores")
    print("| cache | load s (cold) | load s (again) | epoch images/s |")
    print("| --- | ---: | ---: | ---: |")
    for cache in ("none", "memory", "disk"):
        with tempfile.TemporaryDirectory() as cache_dir:
            options = dict(image_size=args.image_size, test_fraction=0.1, cache=cache,
                           cache_dir=cache_dir)
            times = []
            for _ in range(2):
                image_folder._reported.clear()
                image_folder._stats_memo.clear()
                start = time.perf_counter()
                ds = image_folder.load_image_folder("train", args.dir, **options)
                times.append(time.perf_counter() - start)
            rate = epoch_rate(ds, args.epochs, args.batch_size)
            print(f"| {cache} | {times[0]:.1f} | {times[1]:.1f} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
