"""img2img's picture steps, as the WebUI does them: resize modes, masks, crop to the mask, fill, overlay.

Pure PIL / numpy (no model): each function is one step of the WebUI's
``StableDiffusionProcessingImg2Img`` (modules/processing.py, images.py, masking.py), so every
step can be tested on its own.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE = 0, 1, 2, 3
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = 0, 1, 2, 3
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
LANCZOS = Image.Resampling.LANCZOS


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """The WebUI's ``images.resize_image`` (LANCZOS). Mode 3 has no branch there and acts as 2."""
    if mode == JUST_RESIZE:
        return image.resize((width, height), resample=LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == CROP_AND_RESIZE:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((src_w, src_h), resample=LANCZOS)
        out = Image.new("RGB" if image.mode not in ("L", "RGBA") else image.mode, (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return out
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=LANCZOS)
    out = Image.new("RGB" if image.mode not in ("L", "RGBA") else image.mode, (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:  # bands above and below: stretch the outermost rows
        fill_height = height // 2 - src_h // 2
        if fill_height > 0:
            out.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                      box=(0, fill_height + src_h))
    elif ratio > src_ratio:  # bands left and right: stretch the outermost columns
        fill_width = width // 2 - src_w // 2
        if fill_width > 0:
            out.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                      box=(fill_width + src_w, 0))
    return out


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """Transparent parts onto the background colour (``img2img_background_color``), as RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background)
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def binary_mask(mask: Image.Image, round_mask: bool = True) -> Image.Image:
    """``create_binary_mask``: a not-fully-opaque RGBA's alpha is the mask (>128 → 255 when
    rounding); anything else is its greyscale (white = repaint)."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.split()[-1]
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_mask else alpha
    return mask.convert("L")


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """The WebUI's separable Gaussian (cv2 kernel k = 2·int(2.5σ+0.5)+1 on each axis)."""
    if blur_x <= 0 and blur_y <= 0:
        return mask
    arr = np.asarray(mask, dtype=np.float32)
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        if sigma > 0:
            arr = _gaussian_1d(arr, sigma, axis)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _gaussian_1d(arr: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    radius = int(2.5 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    # cv2's default border (BORDER_REFLECT_101) mirrors without repeating the edge pixel.
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(arr, pad, mode="reflect")
    return np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="valid"), axis, padded)


def crop_region(mask: Image.Image, padding: int = 0) -> tuple[int, int, int, int] | None:
    """Bounding box (x1, y1, x2, y2) of the mask's non-zero pixels grown by ``padding``; None if blank."""
    arr = np.asarray(mask.convert("L"))
    ys, xs = np.nonzero(arr)
    if len(xs) == 0:
        return None
    h, w = arr.shape
    return (max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0),
            min(int(xs.max()) + 1 + padding, w), min(int(ys.max()) + 1 + padding, h))


def expand_crop_region(region: tuple[int, int, int, int], width: int, height: int, image_width: int,
                       image_height: int) -> tuple[int, int, int, int]:
    """Grow the short side of ``region`` to the processing size's aspect ratio, inside the image."""
    x1, y1, x2, y2 = region
    ratio_crop = (x2 - x1) / (y2 - y1)
    ratio_target = width / height
    if ratio_crop > ratio_target:
        desired = (x2 - x1) / ratio_target
        diff = int(desired - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_height:
            shift = y2 - image_height
            y2, y1 = y2 - shift, y1 - shift
        if y1 < 0:
            y2, y1 = y2 - y1, 0
        y2 = min(y2, image_height)
    else:
        desired = (y2 - y1) * ratio_target
        diff = int(desired - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_width:
            shift = x2 - image_width
            x2, x1 = x2 - shift, x1 - shift
        if x1 < 0:
            x2, x1 = x2 - x1, 0
        x2 = min(x2, image_width)
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """"Masked content: fill": paint the masked area with colours blurred in from around it."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def overlay_image(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The picture with the area to repaint made transparent (pasted back over the result later)."""
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return masked.convert("RGBA")


def apply_overlay(image: Image.Image, paste_to: tuple[int, int, int, int] | None,
                  overlay: Image.Image | None) -> Image.Image:
    """The WebUI's ``apply_overlay``: the result back into the original (only masked), then the
    untouched pixels of the original over it, so they come out exactly as they went in."""
    if overlay is None:
        return image
    if paste_to is not None:
        x, y, w, h = paste_to
        base = Image.new("RGBA", overlay.size)
        base.paste(resize_image(CROP_AND_RESIZE, image, w, h), (x, y))
        image = base
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


def latent_mask(mask: Image.Image, latent_width: int, latent_height: int, round_mask: bool = True) -> np.ndarray:
    """The repaint mask at latent size, [H, W] in 0..1 (the WebUI's ``p.nmask`` before tiling)."""
    small = mask.convert("RGB").resize((latent_width, latent_height))
    arr = np.asarray(small, dtype=np.float32)[..., 0] / 255.0
    return np.around(arr) if round_mask else arr
