"""Image decoding and validation: the ONE function that turns uploaded bytes into model input.

Any size and mode is accepted. The first frame is taken (GIF, animated WebP), EXIF rotation is
ignored (CIFAR photos have none), transparency is composited onto white, the result is converted
to RGB and resized to 32x32 with bicubic filtering, without cropping (the aspect ratio is not
kept; CIFAR images are square). A 32x32 RGB upload passes through untouched.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.config import MAX_IMAGE_PIXELS
from service.errors import BadInput

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
SIZE = 32


def decode_image(data: bytes, index: int = 0, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Bytes of one image file -> uint8 [3, 32, 32] RGB. Raises BadInput naming the problem."""
    if not data:
        raise BadInput("empty file; send the bytes of a JPEG, PNG, WebP, BMP or GIF image", index)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and later raises) on huge images; we check the size ourselves first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = im.size
            if width * height > max_pixels:
                raise BadInput(
                    f"declared size {width}x{height} exceeds the limit of {max_pixels} pixels "
                    "(decompression bomb?); downscale the image before sending it", index,
                    status=413,
                )
            if im.format == "JPEG":
                # Decode a JPEG at a reduced scale when it is much larger than 32x32: faster,
                # and the resize below would throw those pixels away anyway.
                im.draft("RGB", (SIZE * 2, SIZE * 2))
            im.seek(0)
            im.load()
            im = _to_rgb(im)
            if im.size != (SIZE, SIZE):
                im = im.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    except BadInput:
        raise
    except UnidentifiedImageError:
        raise BadInput(f"not an image file Pillow can read; accepted formats: "
                       f"{', '.join(FORMATS)}", index) from None
    except Image.DecompressionBombError as e:
        raise BadInput(f"decompression bomb ({_first_line(e)})", index, status=413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        raise BadInput(f"corrupt image data ({_first_line(e)})", index) from None
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def check_count(n: int, max_images: int) -> None:
    if n > max_images:
        raise BadInput(f"{n} images in one request; the limit is {max_images} "
                       "(split the request or raise CIFAR2_MAX_IMAGES)", status=413)


def decode_images(files: list[bytes], max_images: int) -> np.ndarray:
    """Many files -> uint8 [N, 3, 32, 32]; the first bad one raises BadInput with its index."""
    if not files:
        raise BadInput("no images; send one or more files in the multipart field 'images'")
    check_count(len(files), max_images)
    return np.stack([decode_image(data, i) for i, data in enumerate(files)])


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
