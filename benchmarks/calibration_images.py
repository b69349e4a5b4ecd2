"""Images to calibrate and verify int8 conversions on, made offline (no photo set is shipped).

Half are random crops, flips and colour jitter of matplotlib's sample photograph (its
statistics are a photograph's), half are scenes of random shapes on colour gradients.
Random pixels would calibrate ranges no photograph has.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _sample_photo() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
        return np.asarray(Image.open(file).convert("RGB"))


def _crop(rng, photo: np.ndarray) -> Image.Image:
    height, width = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(height, width))
    y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    image = photo[y : y + side, x : x + side].astype(np.float32)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    image = (image - 128.0) * rng.uniform(0.7, 1.3) + 128.0 + rng.uniform(-30, 30, 3)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).resize((256, 256))


def _scene(rng) -> Image.Image:
    ramp = np.linspace(0, 1, 256)[:, None, None]
    low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    image = Image.fromarray((low + ramp * (high - low) + np.zeros((256, 256, 3))).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 7)):
        x, y = rng.integers(0, 256, 2)
        r = rng.integers(10, 80)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - r, y - r, x + r, y + r],
                                                                 fill=colour)  # fmt: skip
    return image


def make_images(folder: Path) -> tuple[Path, Path]:
    """100 calibration and 50 validation images: photo crops and shape scenes, as JPEGs."""
    rng = np.random.default_rng(0)
    photo = _sample_photo()
    for part, count in (("calibration", 100), ("validation", 50)):
        (folder / part).mkdir(parents=True)
        for i in range(count):
            image = _crop(rng, photo) if i % 2 == 0 else _scene(rng)
            image.save(folder / part / f"{i:03d}.jpg", quality=92)
    return folder / "calibration", folder / "validation"
