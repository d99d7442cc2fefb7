"""The CLIP tokenizer of a Hub-layout folder: a few small files, read without torch (the token counter of a
front end that holds no models reads it too)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sd2_app.errors import LoadError
from sd2_app.loading.hub import repo_label

if TYPE_CHECKING:
    from transformers import CLIPTokenizer


def load_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """The CLIP tokenizer; SD2 pads with "!" (id 0), and a tokenizer that does not is refused."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    except (OSError, ValueError) as e:
        raise LoadError(repo_label(folder), "tokenizer", f"transformers could not load it ({e})") from e
    if tokenizer.pad_token_id != 0:
        reason = f"pad token id is {tokenizer.pad_token_id} ({tokenizer.pad_token!r}), SD2 needs 0 ('!')"
        raise LoadError(repo_label(folder), "tokenizer/special_tokens_map.json", reason)
    return tokenizer
