"""How ``face.png`` and ``background.png`` were made (run once; needs scikit-image and Pillow).

Both come from images that ship inside scikit-image (``skimage.data``):

* ``face.png`` (40x30): the face of astronaut Eileen Collins from ``skimage.data.astronaut()``,
  a NASA photograph in the public domain (NASA Great Images database, https://flic.kr/p/r9qvLn),
  converted to grayscale (luminance), box-downsampled, and its levels mapped linearly from
  0..255 to 32..224 so that moderate noise rarely clips when the noisy images are 8-bit.
* ``background.png`` (72x96): a crop of ``skimage.data.brick()``, from CC0Textures (Bricks25),
  licensed CC0, box-downsampled: a textured, repetitive background.

The noisy images in ``noisy/`` are made from these two files by ``facefinder generate``
(see ``README.md`` in this folder). Not needed to use or test facefinder.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).parent


def shrink(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Box-downsample a float image to ``size = (width, height)`` and round to uint8."""
    image = Image.fromarray(pixels.astype(np.float32), mode="F")
    small = np.asarray(image.resize(size, Image.Resampling.BOX))
    return small.round().clip(0, 255).astype(np.uint8)


def main() -> None:
    gray = data.astronaut() @ np.array([0.299, 0.587, 0.114])
    face = 32 + gray[24:204, 165:300] * (192 / 255)
    Image.fromarray(shrink(face, (30, 40))).save(HERE / "face.png")
    brick = data.brick().astype(np.float64)
    Image.fromarray(shrink(brick[100:388, 60:444], (96, 72))).save(HERE / "background.png")


if __name__ == "__main__":
    main()
