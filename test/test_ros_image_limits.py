"""Camera input limits: oversized or undecodable images are refused with a reason before any
image-sized allocation (erc_ros.ros.convert, through the Ingest path the nodes and eval-bag
use), and OpenCV failures on odd frames are refusals, not exceptions.

The oversized images here are real files a decoder accepts (a valid PNG of zeros, a JPEG whose
frame header is patched), made cheaply: their compressed size is kilobytes.
"""
from __future__ import annotations

import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from erc_ros.core.errors import InputError
from erc_ros.ros import convert

# Peak traced allocation allowed while refusing an oversized image: the message data already
# exists, so a refusal allocates next to nothing; decoding a 20000x20000 frame would allocate
# 20000*20000*3 B = 1.2 GB (16 MiB is 1/70 of that and far above the parser's bookkeeping).
_NO_DECODE_BYTES = 16 << 20


def _zeros_zlib(nbytes: int, block: int = 1 << 20) -> bytes:
    """A valid zlib stream of ``nbytes`` zero bytes, built in milliseconds for any size: after
    a full flush the compressor restarts, so every full block compresses to the same bytes and
    is repeated; the Adler-32 of n zeros is (n mod 65521) << 16 | 1."""
    if nbytes <= block:
        return zlib.compress(bytes(nbytes), 9)
    z = zlib.compressobj(9)
    head = z.compress(bytes(block)) + z.flush(zlib.Z_FULL_FLUSH)
    body = z.compress(bytes(block)) + z.flush(zlib.Z_FULL_FLUSH)
    assert head[2:] == body  # the 2-byte zlib header, then identical blocks
    n, rest = divmod(nbytes, block)
    tail = z.compress(bytes(rest)) + z.flush()
    adler = ((nbytes % 65521) << 16) | 1
    return head + body * (n - 1) + tail[:-4] + struct.pack(">I", adler)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _black_png(width: int, height: int) -> bytes:
    """A real 8-bit greyscale PNG of zeros (each row: filter byte 0 + width zero bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", _zeros_zlib((width + 1) * height)) + _chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is patched to claim width x height."""
    ok, enc = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(enc.tobytes())
    i = data.index(b"\xff\xc0")
    assert struct.unpack_from(">HH", data, i + 5) == (16, 16)  # height, width
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def _refusal(fn, *args, **kwargs) -> tuple[InputError, int]:
    """The InputError ``fn`` raises and the peak traced allocation while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as err:
            fn(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return err.value, peak


def test_the_helpers_make_real_images():
    assert zlib.decompress(_zeros_zlib(3 * (1 << 20) + 5)) == bytes(3 * (1 << 20) + 5)
    assert zlib.decompress(_zeros_zlib(2 << 20)) == bytes(2 << 20)
    img = cv2.imdecode(np.frombuffer(_black_png(37, 23), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (23, 37) and not img.any()
    big = _black_png(20000, 20000)
    assert len(big) < 1 << 20  # the bomb: kilobytes that decode to 400 Mpx


def _with_fill_bytes(jpeg: bytes) -> bytes:
    """The same JPEG with two 0xFF fill bytes before its quantisation table (allowed)."""
    i = jpeg.index(b"\xff\xdb")
    return jpeg[:i] + b"\xff\xff" + jpeg[i:]


@pytest.mark.parametrize("ext, params, post", [
    (".jpg", [], None), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], None),
    (".jpg", [cv2.IMWRITE_JPEG_RST_INTERVAL, 2], None), (".jpg", [], _with_fill_bytes),
    (".jpg", [], "grey"), (".png", [], "16bit"), (".png", [], "rgba"), (".png", [], "grey"),
])
def test_header_parsers_read_the_jpeg_and_png_variants_cameras_send(ext, params, post):
    rgb = np.random.default_rng(3).integers(0, 255, (37, 53, 3), np.uint8)
    img = {"grey": rgb[..., 0], "16bit": rgb.astype(np.uint16) * 257,
           "rgba": np.dstack([rgb, rgb[..., :1]])}.get(post, rgb)
    data = cv2.imencode(ext, img, params)[1].tobytes()
    if callable(post):
        data = post(data)
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                            cv2.COLOR_BGR2RGB)
    out = convert.image_to_frame(CompressedImage(format="", data=data), max_pixels=37 * 53)
    assert np.array_equal(out.image, expected)


def test_png_bomb_is_refused_from_its_header_without_decoding():
    msg = CompressedImage(format="png", data=_black_png(20000, 20000))
    err, peak = _refusal(convert.image_to_frame, msg)
    assert err.reason == "image_too_large"
    assert "20000x20000" in str(err) and str(convert.MAX_IMAGE_PIXELS) in str(err)
    assert peak < _NO_DECODE_BYTES


def test_png_over_opencv_own_limit_is_a_refusal_not_a_cv2_error():
    # 40000x40000 is over OpenCV's 2**30-pixel limit: imdecode used to raise cv2.error.
    msg = CompressedImage(format="png", data=_black_png(40000, 40000))
    # With our limit lifted, OpenCV's own refusal (a cv2.error) is caught as a refusal too.
    err, _ = _refusal(convert.compressed_to_rgb, msg, max_pixels=1 << 40)
    assert err.reason == "image_decode" and "OpenCV" in str(err)
    err, _ = _refusal(convert.compressed_to_rgb, msg)
    assert err.reason == "image_too_large"


def test_jpeg_whose_frame_header_claims_30000x30000_is_refused_without_decoding():
    msg = CompressedImage(format="jpeg", data=_jpeg_claiming(30000, 30000))
    err, peak = _refusal(convert.image_to_frame, msg)
    assert err.reason == "image_too_large" and "30000x30000" in str(err)
    assert peak < _NO_DECODE_BYTES


def test_limits_are_arguments_and_an_image_at_the_limit_decodes():
    rgb = np.zeros((30, 40, 3), np.uint8)
    for fmt in ("png", "jpeg"):
        msg = convert.rgb_to_compressed(rgb, fmt=fmt)
        assert convert.image_to_frame(msg, max_pixels=40 * 30).image.shape == (30, 40, 3)
        err, _ = _refusal(convert.image_to_frame, msg, max_pixels=40 * 30 - 1)
        assert err.reason == "image_too_large"
        n = len(msg.data)
        assert convert.image_to_frame(msg, max_bytes=n).image.shape == (30, 40, 3)
        err, _ = _refusal(convert.image_to_frame, msg, max_bytes=n - 1)
        assert err.reason == "image_too_large" and str(n) in str(err)
    raw = convert.rgb_to_image(rgb)
    assert convert.image_to_frame(raw, max_pixels=40 * 30).image.shape == (30, 40, 3)
    err, _ = _refusal(convert.image_to_frame, raw, max_pixels=40 * 30 - 1)
    assert err.reason == "image_too_large"


def test_raw_image_over_the_pixel_limit_is_refused_before_allocating():
    # Claimed 20000x20000 with short data: refused for its size, nothing read.
    msg = Image(height=20000, width=20000, encoding="mono8", step=20000, data=b"\x00" * 100)
    err, peak = _refusal(convert.image_to_frame, msg)
    assert err.reason == "image_too_large" and "20000x20000" in str(err)
    # Complete data one column over the limit: refused, no RGB copy made.
    w, h = 4097, 4096
    assert w * h > convert.MAX_IMAGE_PIXELS
    msg = Image(height=h, width=w, encoding="mono8", step=w, data=bytes(w * h))
    err, peak = _refusal(convert.image_to_frame, msg)
    assert err.reason == "image_too_large"
    assert peak < w * h  # converting would allocate at least 3 * w * h bytes


@pytest.mark.parametrize("step, size, why", [
    (5, 5 * 4, "step"),          # step shorter than a 6-byte rgb8 row of width 2
    (6, 6 * 4 + 1, "longer"),    # data longer than step * height
    (8, 8 * 4 + 8, "longer"),
])
def test_raw_image_whose_layout_is_inconsistent_is_refused(step, size, why):
    msg = Image(height=4, width=2, encoding="rgb8", step=step, data=bytes(size))
    err, _ = _refusal(convert.image_to_rgb, msg)
    assert err.reason == "image_decode" and why in str(err)


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_odd_width_yuv422_is_a_refusal_not_a_cv2_error(encoding):
    msg = Image(height=4, width=5, encoding=encoding, step=10, data=bytes(40))
    err, _ = _refusal(convert.image_to_frame, msg)
    assert err.reason == "image_decode" and "even" in str(err)
    ok = Image(height=4, width=6, encoding=encoding, step=12, data=bytes(48))
    assert convert.image_to_frame(ok).image.shape == (4, 6, 3)


def test_corrupt_and_truncated_png_are_refused():
    ok, enc = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (32, 32, 3),
                                                                      np.uint8))
    png = bytearray(enc.tobytes())
    corrupt = bytes(png[:60]) + b"\xff" * 40 + bytes(png[100:])
    for data in (corrupt, bytes(png[:len(png) // 2]), bytes(png[:20]), bytes(png[:8])):
        err, _ = _refusal(convert.image_to_frame, CompressedImage(format="png", data=data))
        assert err.reason == "image_decode"


@pytest.mark.parametrize("ext, fmt", [(".bmp", "bmp"), (".tiff", "png; tiff compressed"),
                                      (".webp", "webp"), (".ppm", "")])
def test_formats_other_than_jpeg_and_png_are_refused(ext, fmt):
    ok, enc = cv2.imencode(ext, np.zeros((8, 8, 3), np.uint8))
    err, _ = _refusal(convert.image_to_frame, CompressedImage(format=fmt,
                                                              data=enc.tobytes()))
    assert err.reason == "image_encoding" and "JPEG" in str(err)


def test_ingest_refuses_oversized_and_odd_frames_with_a_reason():
    from erc_ros.core.perception import PerceptionConfig, PerceptionCore
    from erc_ros.ros.ingest import Ingest

    core = PerceptionCore(PerceptionConfig.from_dict(
        {"diarization.enabled": False, "faces.enabled": False}))
    ingest = Ingest(core, max_image_pixels=64 * 48, max_image_bytes=1 << 20)
    rgb = np.zeros((48, 64, 3), np.uint8)
    assert ingest.feed("image", convert.rgb_to_image(rgb, 1.0), 1.0)
    assert ingest.feed("compressed", convert.rgb_to_compressed(rgb, 1.1, fmt="png"), 1.1)
    bomb = CompressedImage(format="png", data=_black_png(20000, 20000))
    assert not ingest.feed("compressed", bomb, 1.2)
    yuv = Image(height=4, width=5, encoding="yuv422", step=10, data=bytes(40))
    assert not ingest.feed("image", yuv, 1.3)
    big = convert.rgb_to_image(np.zeros((48, 65, 3), np.uint8), 1.4)
    assert not ingest.feed("image", big, 1.4)  # the Ingest's own limit, not the default
    assert not ingest.feed("compressed", CompressedImage(data=bytes(1 << 20) + b"x"), 1.5)
    assert ingest.health.refused == {"image_too_large": 3, "image_decode": 1}
    assert ingest.health.counts["in.image"] == 1 and ingest.health.counts["in.compressed"] == 1
    assert not any(k.startswith("errors.") for k in ingest.health.counts)
    # The conversion ahead of feed (offline replay) applies the same limits.
    ahead = ingest.convert_ahead("image", big)
    assert isinstance(ahead, InputError) and ahead.reason == "image_too_large"
    assert not ingest.feed("image", big, 1.6, converted=ahead)
    assert ingest.health.refused["image_too_large"] == 4


def test_ingest_limits_must_be_positive():
    from erc_ros.core.perception import PerceptionConfig, PerceptionCore
    from erc_ros.ros.ingest import Ingest

    core = PerceptionCore(PerceptionConfig.from_dict(
        {"diarization.enabled": False, "faces.enabled": False}))
    for bad in ({"max_image_pixels": 0}, {"max_image_bytes": -1}):
        with pytest.raises(ValueError):
            Ingest(core, **bad)
