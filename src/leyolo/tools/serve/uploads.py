"""Uploaded bytes -> BGR image, refusing what would hurt the server before it is decoded.

Why the header is parsed here instead of trusting the decoder: a "decompression bomb" is a
valid file, so the decoder does its full work. Measured (OpenCV 5.0, one core): a 389 kB PNG
of 20000 x 20000 pixels takes 7.1 s and 2.3 GB with ``IMREAD_COLOR``, and still 2.5 s and
1.2 GB with ``IMREAD_REDUCED_COLOR_8`` (it shrinks the result, not the decoding). OpenCV's own
guard, ``OPENCV_IO_MAX_IMAGE_PIXELS`` (2**30 by default), does refuse before allocating, but
it is read when ``cv2`` is imported (measured: setting it later has no effect), so it cannot
differ per app; set before starting the server it still applies, and is answered 413 here.
Reading width and height from the header of each supported format costs microseconds and
runs before any pixel is allocated; formats whose header is not parsed here are refused
(422), so nothing reaches the decoder unchecked.

Multipart bodies are parsed here too, from the bytes already read and bounded: Starlette's
form parser spools file parts above 1 MiB to a temporary file, and nothing from a request
may reach the file system.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from ...data.images import to_bgr8
from ...errors import LeyoloError
from ...optional import require
from .limits import ApiError

FORMATS = "JPEG, PNG, WebP, BMP, TIFF, PNM or JPEG 2000"
MAX_FIELD_BYTES = 1024  # a text form field (conf, classes, ...)


def _u16be(b: bytes, i: int) -> int:
    return struct.unpack_from(">H", b, i)[0]


def _jpeg_size(b: bytes) -> tuple[int, int]:
    """Walk the JPEG segments to the first start-of-frame (SOF0..SOF15 bar DHT/JPG/DAC)."""
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            raise ValueError("corrupt JPEG (bad segment marker)")
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("corrupt JPEG (no frame header before the image data)")
        length = _u16be(b, i + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(b):
                break
            return _u16be(b, i + 7), _u16be(b, i + 5)
        i += 2 + length
    raise ValueError("truncated JPEG (no frame header)")


def _webp_size(b: bytes) -> tuple[int, int]:
    chunk = b[12:16]
    if chunk == b"VP8 " and len(b) >= 30 and b[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack_from("<HH", b, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(b) >= 25 and b[20] == 0x2F:
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(b) >= 30:
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    raise ValueError("corrupt WebP header")


def _tiff_size(b: bytes) -> tuple[int, int]:
    end = "<" if b[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(end + "I", b, 4)
    (count,) = struct.unpack_from(end + "H", b, offset)
    found: dict[int, int] = {}
    for k in range(count):
        tag, kind, _n = struct.unpack_from(end + "HHI", b, offset + 2 + 12 * k)
        if tag in (256, 257):
            fmt = end + ("H" if kind == 3 else "I")
            found[tag] = struct.unpack_from(fmt, b, offset + 10 + 12 * k)[0]
    if 256 not in found or 257 not in found:
        raise ValueError("TIFF without width/height tags")
    return found[256], found[257]


def _pnm_size(b: bytes) -> tuple[int, int]:
    tokens: list[bytes] = []
    for line in b[2:512].split(b"\n"):
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            return int(tokens[0]), int(tokens[1])
    raise ValueError("corrupt PNM header")


def _jp2_size(b: bytes) -> tuple[int, int]:
    if b[:4] == b"\xff\x4f\xff\x51":  # raw codestream: SIZ segment
        x, y, x0, y0 = struct.unpack_from(">IIII", b, 8)
        return x - x0, y - y0
    at = b.find(b"ihdr", 0, 4096)
    if at < 0:
        raise ValueError("JPEG 2000 without an image header box")
    h, w = struct.unpack_from(">II", b, at + 4)
    return w, h


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the file header; ``ValueError`` for what is not a supported image."""
    b = data
    try:
        if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
            return ("png", *struct.unpack_from(">II", b, 16))
        if b[:2] == b"\xff\xd8":
            return ("jpeg", *_jpeg_size(b))
        if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
            return ("webp", *_webp_size(b))
        if b[:2] == b"BM":
            if struct.unpack_from("<I", b, 14)[0] == 12:
                return ("bmp", *struct.unpack_from("<HH", b, 18))
            w, h = struct.unpack_from("<ii", b, 18)
            return "bmp", abs(w), abs(h)
        if b[:4] in (b"II*\x00", b"MM\x00*"):
            return ("tiff", *_tiff_size(b))
        if b[:1] == b"P" and b[1:2] in b"123456" and len(b) > 2 and b[2:3].isspace():
            return ("pnm", *_pnm_size(b))
        if b[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or b[:4] == b"\xff\x4f\xff\x51":
            return ("jp2", *_jp2_size(b))
    except (struct.error, IndexError):
        raise ValueError("truncated image header") from None
    raise ValueError(f"not a supported image (expected {FORMATS})")


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> np.ndarray:
    """Bytes -> uint8 BGR (EXIF orientation applied, as ``leyolo predict`` reads files); ``ApiError`` 413/422."""
    if not data:
        raise ApiError(422, f"{what}: empty upload")
    try:
        fmt, width, height = image_size(data)
    except ValueError as exc:
        raise ApiError(422, f"{what}: {exc}") from None
    if width < 1 or height < 1:
        raise ApiError(422, f"{what}: header says {width}x{height} pixels")
    if width * height > max_pixels:
        raise ApiError(413, f"{what}: {width}x{height} is {width * height:,} pixels, over the limit of "
                            f"{max_pixels:,}")
    if fmt == "jpeg" and b"\xff\xd9" not in data[-4096:]:
        raise ApiError(422, f"{what}: truncated JPEG (no end-of-image marker)")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. OPENCV_IO_MAX_IMAGE_PIXELS set lower than --max-pixels
        if "MAX_IMAGE_PIXELS" in str(exc):
            raise ApiError(413, f"{what}: over the decoder's pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS)") from None
        raise ApiError(422, f"{what}: not a decodable {fmt.upper()} image (decoder error)") from None
    if image is None or image.size == 0:
        raise ApiError(422, f"{what}: not a decodable {fmt.upper()} image (corrupt or truncated)")
    try:
        return to_bgr8(image, what)
    except LeyoloError as exc:
        raise ApiError(422, str(exc)) from None


@dataclass
class Part:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """Parse a form-data body held in memory (already bounded by the body limit) into parts."""
    multipart = require("python_multipart.multipart", "leyolo serve")
    _, options = multipart.parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(422, "multipart/form-data without a boundary")
    parts: list[Part] = []
    state: dict = {"headers": {}, "field": b"", "value": b"", "chunks": []}

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise ApiError(422, f"more than {max_parts} form parts")
        state.update(headers={}, chunks=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"].decode("latin-1")
        state.update(field=b"", value=b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["chunks"].append(data[start:end])

    def on_part_end() -> None:
        disposition, params = multipart.parse_options_header(state["headers"].get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in params:
            raise ApiError(422, "multipart part without a form-data name")
        filename = params.get(b"filename")
        parts.append(Part(params[b"name"].decode("utf-8", "replace"),
                          None if filename is None else filename.decode("utf-8", "replace"),
                          state["headers"].get("content-type"), b"".join(state["chunks"])))

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_part_end": on_part_end}
    parser = multipart.MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python-multipart raises its own MultipartParseError and friends
        raise ApiError(422, f"malformed multipart body ({type(exc).__name__})") from None
    return parts


def form_fields(parts: list[Part], file_fields: tuple[str, ...]) -> tuple[list[Part], dict[str, str]]:
    """Split parts into files (``file_fields`` names) and short text fields."""
    files, fields = [], {}
    for part in parts:
        if part.name in file_fields:
            files.append(part)
            continue
        if part.filename is not None:
            raise ApiError(422, f"unexpected file field {part.name!r} (send the image as {file_fields[0]!r})")
        if len(part.data) > MAX_FIELD_BYTES:
            raise ApiError(422, f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")
        try:
            fields[part.name] = part.data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ApiError(422, f"form field {part.name!r} is not UTF-8 text") from None
    return files, fields
