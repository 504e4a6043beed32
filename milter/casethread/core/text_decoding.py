"""Bytes of text as text, by what names their charset: a byte order mark first (as browsers and
mail clients sniff it), then the charset label, Microsoft's names Python does not know
included, else UTF-8, which reads ASCII alike. Body parts are read so (`bodytext`), and so are
encoded words of a Subject whose label Python does not know (`subject`); stamping writes
UTF-16 text back in the byte order reading took (`stamp`)."""

from __future__ import annotations

from . import mime

# Byte order marks, which name the charset whatever the label says (WHATWG Encoding's
# "decode": browsers and clients sniff them first). UTF-32's before UTF-16LE's, its prefix.
_UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xfe\xff", "utf-16"), (b"\xff\xfe", "utf-16"))
# The code unit of each UTF-16/32 codec (Python's names).
_WIDE = {"utf-16": 2, "utf-16-le": 2, "utf-16-be": 2, "utf-32": 4, "utf-32-le": 4,
         "utf-32-be": 4}
# Bytes of a UTF-16/32 text without a BOM looked at for its byte order.
_BYTE_ORDER_SAMPLE = 16 * 1024


def decode_text(data: bytes, charset: str | None) -> str:
    """A text part's content (transfer-decoded) as text: by its byte order mark, else by its
    charset label (`part_charset`; also Microsoft's names Python does not know, `unicode`,
    `_iso-2022-jp$ESC`), else as UTF-8, the likeliest, which reads ASCII alike.

    Undecodable bytes become U+FFFD. UTF-16 and UTF-32 without a BOM are read in the byte order
    their ASCII characters show (RFC 2781 says big-endian, Windows writes little-endian;
    Python's codecs would take the machine's), big-endian when nothing tells; content so
    labelled without a single NUL byte holds no ASCII character in that form, and is read as
    UTF-8 (a mislabelled ASCII-compatible part).
    """
    label = (charset or "").strip().strip('"').lower()
    codec = mime.codec_for(charset, "utf-8")
    if codec is None:
        # Microsoft's `unicode`, `ucs-2`; its names of ISO-2022-JP
        codec = "utf-16" if label in mime.UTF16_LABELS else mime.READ_AS.get(label)
    if codec in ("utf-32", "utf-32-le", "utf-32-be") and data.startswith(_UTF32_BOMS):
        return data.decode("utf-32", "replace")
    for bom, sniffed in _BOMS:
        if data.startswith(bom):
            return data.decode(sniffed, "replace")
    width = _WIDE.get(codec or "")
    if width is not None:
        if 0 not in data:
            codec = "utf-8"
        elif codec in ("utf-16", "utf-32"):
            codec = byte_order(data, width)
    return data.decode(codec or "utf-8", "replace")


def byte_order(data: bytes, width: int) -> str:
    """`utf-16-be`/`-le` (`utf-32-...` for a `width` of 4) for text without a BOM, by its
    first `_BYTE_ORDER_SAMPLE` bytes: an ASCII character has its NUL bytes first in
    big-endian, last in little-endian (big-endian when they tell nothing). Stamping writes
    such a part back in the order this reads it (`stamp`)."""
    sample = data[:_BYTE_ORDER_SAMPLE]
    big = sample[0::width].count(0)
    little = sample[width - 1 :: width].count(0)
    return f"utf-{8 * width}-{'le' if little > big else 'be'}"
