"""Tokenizer wrapper: encode without special tokens, decode into readable text."""
from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Tokenizer

from .prompt import SPECIAL_MARKS

_SPACE_BEFORE = re.compile(r"\s+([.,!?;:%)\]}])")
_SPACE_AFTER = re.compile(r"([(\[{$#])\s+")
_APOSTROPHE = re.compile(r"(\w)\s*'\s*(s|m|t|re|ve|ll|d)\b", re.IGNORECASE)
_HYPHEN = re.compile(r"(\w)\s+-\s+(\w)")


def detokenize(text: str) -> str:
    """Undo WordPiece spacing: ``i ' m fine , thanks !`` -> ``i'm fine, thanks!``."""
    text = _APOSTROPHE.sub(r"\1'\2", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    text = _HYPHEN.sub(r"\1-\2", text)
    return re.sub(r"\s+", " ", text).strip()


class TextCodec:
    """Encodes text to ids and back with a Hugging Face ``tokenizer.json``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.tokenizer.add_special_tokens(list(SPECIAL_MARKS))
        self.special_ids = {
            tok: tokenizer.token_to_id(tok) for tok in ("[CLS]", "[SEP]", "[PAD]", *SPECIAL_MARKS)
        }

    @classmethod
    def from_file(cls, path: str | Path) -> "TextCodec":
        """Load ``tokenizer.json``."""
        return cls(Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without [CLS]/[SEP]."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Readable text of ``ids``, special tokens dropped."""
        return detokenize(self.tokenizer.decode(ids, skip_special_tokens=True))

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` (padding and truncation off)."""
        self.tokenizer.save(str(path))


class ChatCodec:
    """The byte-level BPE tokenizer of a decoder-only chat model (its text round-trips as it is)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    @classmethod
    def from_file(cls, path: str | Path) -> "ChatCodec":
        """Load ``tokenizer.json``."""
        return cls(Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, nothing added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens dropped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
