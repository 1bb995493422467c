"""Text in and out of token ids: a `tokenizer.json` read by HF's `tokenizers` library (the `llm`
extra), imported only when text is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trtc.errors import TrtcError


class Tokenizer:
    """encode(text) -> ids (with the tokenizer's own special tokens, e.g. a BOS) and
    decode(ids) -> text (special tokens left out)."""

    def __init__(self, inner: Any, path: Path):
        self._inner = inner
        self.path = path

    def encode(self, text: str) -> list[int]:
        return list(self._inner.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._inner.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in a tokenizer.json (or a folder holding one); one line when the library is
    missing or the file is not a tokenizer."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise TrtcError("file not found", where=str(path))
    try:
        import tokenizers
    except ImportError:
        raise TrtcError("text needs the 'tokenizers' library", where=str(path),
                        hint="pip install 'trtc[llm]', or give token ids with --prompt-ids") from None
    try:
        inner = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for a malformed file
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise TrtcError(f"not a tokenizer.json: {text}", where=str(path)) from None
    return Tokenizer(inner, path)
