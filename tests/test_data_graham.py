"""--graham on a disc cut off by the frame: no bright or dark bands along the cut, grey outside the photo."""

import numpy as np
import pytest
from PIL import Image

from retino_utils.data.images import square_resize
from retino_utils.data.preprocess import disc_box, graham, photo_box, preprocess_image

DISC_COLOUR = np.array([190.0, 95.0, 45.0])
RADIUS = 200
BAND_ROWS = 6  # rows of the photo next to a cut that are checked
TOLERANCE = 6  # grey levels a checked row's mean may stray from the central retina's


def fundus(width: int, height: int, centre: tuple[int, int], seed: int = 0) -> Image.Image:
    """A reddish disc of radius 200 on black, darker toward its rim, with mild texture and noise."""
    yy, xx = np.mgrid[:height, :width].astype(float)
    r2 = ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / RADIUS**2
    shade = (1 - 0.25 * r2) * (1 + 0.05 * np.sin(xx / 6) * np.sin(yy / 9))
    pixels = shade[..., None] * DISC_COLOUR + np.random.default_rng(seed).normal(0, 3, (height, width, 3))
    pixels[r2 > 1] = 0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# (frame width, frame height, disc centre in the frame): the 400-wide disc is taller than the frame.
CUT_TOP_AND_BOTTOM = (400, 260, (200, 130))  # like a 1024x683 EyePACS photo
CUT_TOP_ONLY = (400, 340, (200, 130))  # the disc's own bottom edge is in the frame


@pytest.mark.parametrize("size", [128, 512])
@pytest.mark.parametrize("frame", [CUT_TOP_AND_BOTTOM, CUT_TOP_ONLY], ids=["cut-top-and-bottom", "cut-top-only"])
def test_graham_leaves_no_band_along_the_cut_edges(tmp_path, frame, size):
    width, height, (cx, cy) = frame
    photo = fundus(width, height, (cx, cy))
    src, dst = tmp_path / "photo.png", tmp_path / "out.png"
    photo.save(src)
    preprocess_image(src, dst, size, "graham")
    out = np.asarray(Image.open(dst)).astype(float)

    # Where the photo lies in the output square: pad_to_square centres the crop, then it is resized.
    left, top, right, bottom = disc_box(photo)
    side = max(right - left, bottom - top)
    scale = size / side
    offset_y = (side - (bottom - top)) // 2
    cut_top = (offset_y + (0 - top)) * scale  # the photo's top edge (row 0) in output pixels
    disc_x, disc_y = ((side - (right - left)) // 2 + cx - left) * scale, (offset_y + cy - top) * scale
    yy, xx = np.mgrid[:size, :size] + 0.5
    r = np.hypot(xx - disc_x, yy - disc_y) / (RADIUS * scale)

    centre = out[r < 0.3]
    level = np.median(centre)
    assert abs(level - 128) <= 2  # the flat-ish retina becomes mid grey

    def deviations(rows):
        return [out[y][r[y] < 0.85].mean() - level for y in rows]

    first = int(np.ceil(cut_top)) + 1  # skip the row the resize blends with the black padding
    bands = deviations(range(first, first + BAND_ROWS))
    if height - cy < RADIUS:  # cut at the bottom too
        cut_bottom = (offset_y + height - top) * scale
        last = int(np.floor(cut_bottom)) - 1
        bands += deviations(range(last - BAND_ROWS, last))
    assert max(abs(d) for d in bands) <= TOLERANCE, np.round(bands, 1)

    # Outside the photo (the padding that pad_to_square added) and outside the disc: flat grey.
    assert (out[: int(np.floor(cut_top))] == 128).all()
    if height - cy < RADIUS:
        assert (out[int(np.ceil(cut_bottom)) :] == 128).all()
    assert (out[r > 1.0] == 128).all()  # no dark crescent where the disc's own edge is in the frame


@pytest.mark.parametrize(
    "width, height, size",
    [(400, 260, 128), (400, 332, 128), (1024, 683, 512), (683, 1024, 512), (141, 90, 256), (90, 89, 64)],
)
def test_photo_box_holds_only_pixels_untouched_by_the_padding(width, height, size):
    white = np.asarray(square_resize(Image.new("RGB", (width, height), (255, 255, 255)), size))[..., 0]
    left, top, right, bottom = photo_box(width, height, size)
    assert (white[top:bottom, left:right] == 255).all()
    pure = np.argwhere(white == 255)  # at most one row or column of barely blended pixels is given up
    assert top - 1 <= pure[:, 0].min() and pure[:, 0].max() + 1 <= bottom + 1
    assert left - 1 <= pure[:, 1].min() and pure[:, 1].max() + 1 <= right + 1


def test_graham_without_a_region_treats_the_whole_square_as_photo():
    image = square_resize(fundus(400, 400, (200, 200)), 96)
    assert photo_box(400, 400, 96) == (0, 0, 96, 96)
    out = np.asarray(graham(image)).astype(int)
    assert np.array_equal(out, np.asarray(graham(image, (0, 0, 96, 96), (47.5, 47.5, 48.0))))
    assert abs(np.median(out[40:56, 40:56]) - 128) <= 1 and (out[0, 0] == 128).all() and (out[48, 2] == 128).all()
