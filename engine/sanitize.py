"""Make any user text safe to process: valid Unicode, no control or zero-width characters, capped."""
from __future__ import annotations

import re
import unicodedata

_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


def clean_text(text: str | bytes, max_chars: int) -> tuple[str, bool]:
    """Return (cleaned text, whether it was cut to ``max_chars``).

    Bytes are decoded as UTF-8 with replacement, control characters become spaces, zero-width
    and bidi-control characters are removed, whitespace is collapsed.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", text)
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cs", "Co") else ch for ch in text)
    text = re.sub(r"\s+", " ", text).strip()
    cut = len(text) > max_chars
    return (text[:max_chars].rstrip() if cut else text), cut
