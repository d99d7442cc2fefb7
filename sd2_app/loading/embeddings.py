"""Textual-inversion embeddings for SD2: a folder of safetensors files, each a few 1024-wide token vectors.

A token sequence in a prompt equal to a file's stem is replaced by the file's vectors (see
`pipelines.prompt_chunks`). Two layouts are read: A1111's (one tensor named `emb_params`, shape (n, width))
and diffusers' `learned_embeds.safetensors` (one tensor named after its token, (width,) or (n, width)).
Pickle files (`.pt`, `.bin`) are listed as refused with how to convert them, never opened: unpickling can
run code. The vectors are only read here, as float32 numpy arrays (no torch: a front end that holds no models
lists the embeddings and counts their tokens too, sd2_app/serve/backend.py); the text encoder's weights are
never touched (the pipeline puts them into each request's own input embeddings).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, deserialize

from sd2_app.loading.folder_scan import PICKLE_SUFFIXES, folder_changed, folder_stamp, scan_folder

SD1_WIDTH = 768  # CLIP ViT-L/14, the SD 1.x text encoder
SD2_WIDTH = 1024  # OpenCLIP ViT-H/14, the SD 2.x text encoder
MAX_VECTORS = 75  # one chunk; more could never fit in a prompt
MAX_FILE_BYTES = 8 * 2**20  # an embedding is kilobytes; anything this big is not one
CONVERT_HINT = (
    "it is a pickle file, which this app never opens (unpickling can run code). Convert it once to "
    "'{stem}.safetensors' on a machine you trust: README.md, 'Embeddings', has a one-line command."
)


class EmbeddingError(ValueError):
    """A file in the embeddings folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class TextualInversion:
    """One embedding: its prompt name (the file stem), its vectors (n, width) and A1111's short hash."""

    name: str
    vectors: np.ndarray = field(repr=False)  # (n, width) float32 (the pipeline makes it a tensor)
    shorthash: str  # first 12 hex digits of the file's sha256, as A1111 writes in `TI hashes:`

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])


# safetensors' floating-point dtypes (little-endian) as numpy reads them; BF16, which numpy lacks, is widened
# to float32 by hand
_FLOAT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def _array(view: dict[str, Any]) -> np.ndarray | None:
    """One tensor of `safetensors.deserialize` ({"dtype", "shape", "data"}) as a float32 array; None when it
    is not floating point."""
    data, dtype, shape = view["data"], view["dtype"], tuple(view["shape"])
    if dtype == "BF16":  # bfloat16 is float32's upper 16 bits: shifting them up is exact
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if dtype not in _FLOAT_DTYPES:
        return None
    return np.frombuffer(data, dtype=_FLOAT_DTYPES[dtype]).astype(np.float32).reshape(shape)


def _vectors(tensors: dict[str, dict[str, Any]], name: str) -> np.ndarray:
    if "emb_params" in tensors:
        key = "emb_params"
    elif {"clip_l", "clip_g"} & tensors.keys():
        raise EmbeddingError(f"{name}: an SDXL embedding (clip_l/clip_g); this app runs SD 2.x")
    elif len(tensors) == 1:
        key = next(iter(tensors))
    else:
        raise EmbeddingError(f"{name}: expected one tensor named emb_params, or one {{token: vectors}} entry; "
                             f"found {', '.join(sorted(tensors)[:5])}")
    vectors = _array(tensors[key])
    shape, dtype = tuple(tensors[key]["shape"]), tensors[key]["dtype"]
    if vectors is not None and vectors.ndim == 1:
        vectors = vectors[None]
    if vectors is None or vectors.ndim != 2:
        raise EmbeddingError(f"{name}: expected floating-point vectors of shape (n, width), got {shape} {dtype}")
    return vectors


def load_embedding(path: Path, width: int | None = None) -> TextualInversion:
    """Read one safetensors embedding; raises EmbeddingError. 768-wide vectors (SD 1.x) are always refused;
    with `width`, any other width than the text encoder's too (the pipeline checks again per request)."""
    name = path.stem
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise EmbeddingError(f"{path.name}: {CONVERT_HINT.format(name=path.name, stem=name)}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise EmbeddingError(f"{path.name}: {size} bytes is too large for an embedding")
    data = path.read_bytes()
    try:
        tensors = dict(deserialize(data))
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise EmbeddingError(f"{path.name}: not a readable safetensors file ({error})") from error
    vectors = _vectors(tensors, path.name)
    if vectors.shape[1] == SD1_WIDTH:
        raise EmbeddingError(f"{path.name}: {SD1_WIDTH}-wide vectors, an embedding for SD 1.x; SD 2.x needs "
                             f"{width or SD2_WIDTH}-wide ones")
    if width is not None and vectors.shape[1] != width:
        raise EmbeddingError(f"{path.name}: {vectors.shape[1]}-wide vectors; this text encoder needs {width}")
    if not 1 <= vectors.shape[0] <= MAX_VECTORS:
        raise EmbeddingError(f"{path.name}: {vectors.shape[0]} vectors; 1 to {MAX_VECTORS} fit in a prompt")
    vectors = np.ascontiguousarray(vectors)
    if not bool(np.isfinite(vectors).all()):
        raise EmbeddingError(f"{path.name}: the vectors hold NaN or infinite values")
    return TextualInversion(name, vectors, hashlib.sha256(data).hexdigest()[:12])


@dataclass(frozen=True)
class EmbeddingLibrary:
    """The embeddings of one folder as `scan` read them; immutable, so requests can share it freely (a folder
    whose files changed is read again into a new library: `sd2_app.api.watched_folder`)."""

    folder: Path | None = None
    embeddings: dict[str, TextualInversion] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # file name -> why it is not used
    width: int | None = None  # the only width read (`scan`); None: any
    stamp: tuple[tuple[str, int, int], ...] = ()  # the folder as it was scanned (`folder_stamp`)

    @classmethod
    def scan(cls, folder: str | Path | None, width: int | None = None) -> EmbeddingLibrary:
        """Every embedding in `folder` (not recursive); with `width`, only those of that width.

        A folder that does not exist is an empty library. Files that cannot be used are logged and kept in
        `refused` with the reason, so the UI can say why an expected name is missing.
        """
        if folder is None or not Path(folder).is_dir():
            return cls(None if folder is None else Path(folder), width=width)
        stamp = folder_stamp(Path(folder))  # before the scan: a file changed during it is scanned again next time
        found, refused = scan_folder(Path(folder), lambda path: load_embedding(path, width), EmbeddingError,
                                     "embedding")
        return cls(Path(folder), found, refused, width, stamp)

    def changed(self) -> bool:
        """Whether the folder holds other files than when it was scanned (`folder_changed`)."""
        return folder_changed(self.folder, self.stamp)

    def rescanned(self) -> EmbeddingLibrary:
        return EmbeddingLibrary.scan(self.folder, self.width)

    def names(self) -> list[str]:
        return sorted(self.embeddings)
