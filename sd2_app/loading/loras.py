"""LoRA files for SD2: a folder of safetensors files in the layout A1111 and kohya-ss/sd-scripts write.

Each layer's name is `lora_unet_` or `lora_te_` followed by the diffusers / transformers module path with "_"
for "." (sd-scripts networks/lora.py, `LoRANetwork`), and its tensors say what kind of change it is:

- LoRA (and LoCon): `<layer>.lora_down.weight` (rank, in[, kh, kw]) and `<layer>.lora_up.weight` (out, rank[, 1,
  1]); the change is up @ down (Hu et al. 2021, "LoRA", eq. 3).
- LyCORIS LoHa: `<layer>.hada_w1_a` (out, rank), `.hada_w1_b` (rank, in·kh·kw), `.hada_w2_a`, `.hada_w2_b`; the
  change is (w1_a @ w1_b) ⊙ (w2_a @ w2_b) (Hyeon-Woo et al. 2022, "FedPara", eq. 2; Yeh et al. 2023, "LyCORIS").
- LyCORIS LoKr: `<layer>.lokr_w1` or `.lokr_w1_a` @ `.lokr_w1_b`, and `.lokr_w2` or `.lokr_w2_a` @ `.lokr_w2_b`;
  the change is w1 ⊗ w2, the Kronecker product (Yeh et al. 2023, "LyCORIS", LoKr).

An optional scalar `<layer>.alpha` scales it (pipelines/lora.py reads the scale and merges the change).

Here only the header of each file is read (the tensors' names, dtypes and shapes), at start-up and whenever
the folder changes (`sd2_app.api.lora_tools`): the names say the layout and the shapes the model it was made
for. A file is refused, with the reason, when it is a pickle, too large, unreadable, another layout (LyCORIS
with a Tucker core, DoRA, diffusers/PEFT, SDXL's) or for SD 1.x. The tensors are read when a prompt first uses
the file (pipelines/lora.py). No torch: a front end that holds no models lists the LoRAs too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd2_app.loading.embeddings import SD1_WIDTH, SD2_WIDTH
from sd2_app.loading.folder_scan import (PICKLE_SUFFIXES, folder_changed, folder_stamp, safetensors_header,
                                         scan_folder)

MAX_FILE_BYTES = 2**30  # 1 GiB: a LoRA (even a full-rank LoCon) for SD2 is well below it
PREFIXES = ("lora_unet_", "lora_te_")
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
HADA = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")
# Each kind of layer and the parts it needs; a part is there when all the tensors of one of its forms are (a
# LoKr factor whole, or as the product of two halves).
KINDS: dict[str, tuple[tuple[tuple[str, ...], ...], ...]] = {
    "lora": (((DOWN,),), ((UP,),)),
    "loha": tuple(((suffix,),) for suffix in HADA),
    "lokr": (((".lokr_w1",), (".lokr_w1_a", ".lokr_w1_b")), ((".lokr_w2",), (".lokr_w2_a", ".lokr_w2_b"))),
}
# key fragments of layouts that are not read, each with what to call it
_OTHER_LAYOUTS = (
    (".hada_t1", "a LyCORIS LoHa with a Tucker core"), (".lokr_t2", "a LyCORIS LoKr with a Tucker core"),
    (".lora_mid.", "a LyCORIS LoCon with a Tucker core"), (".dora_scale", "a DoRA"), (".oft_", "an OFT"),
    ("lora_te1_", "an SDXL"), ("lora_te2_", "an SDXL"), ("lora_unet_input_blocks", "an SDXL"),
    (".lora_A.", "a diffusers/PEFT"), (".lora.down.", "a diffusers"),
)
# a cross-attention key projection's factor whose second side is the text encoder's width
CROSS_KEYS = ("attn2_to_k" + DOWN, "attn2_to_k" + HADA[1])


class LoraFileError(ValueError):
    """A file in the LoRA folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class LoraFile:
    """One usable LoRA file: its prompt name (the file stem), where it is, its size and its layer names."""

    name: str
    path: Path
    size: int
    layers: tuple[str, ...] = field(repr=False)


def _candidates(names: set[str]) -> dict[str, str]:
    """Every layer a tensor name names by one of a kind's suffixes: layer -> kind."""
    found = {}
    for key in names:
        if key.startswith(PREFIXES):
            for kind, parts in KINDS.items():
                suffix = next((s for part in parts for form in part for s in form if key.endswith(s)), None)
                if suffix is not None:
                    found[key[:-len(suffix)]] = kind
    return found


def _missing(layer: str, kind: str, names: set[str]) -> str | None:
    """The first tensor `layer` lacks of a part of its kind (of the part's form it has most of); None when it
    is whole."""
    for part in KINDS[kind]:
        if not any(all(layer + suffix in names for suffix in form) for form in part):
            form = max(part, key=lambda form: sum(layer + suffix in names for suffix in form))
            return next(layer + suffix for suffix in form if layer + suffix not in names)
    return None


def layer_kinds(keys: Iterable[str]) -> dict[str, str]:
    """The layers among a file's tensor names that have every part of their kind (`KINDS`): layer -> kind,
    sorted by layer."""
    names = set(keys)
    return dict(sorted((layer, kind) for layer, kind in _candidates(names).items()
                       if _missing(layer, kind, names) is None))


def _layers(header: dict[str, Any], name: str) -> tuple[str, ...]:
    """The layers the header describes, or LoraFileError naming what the file is instead."""
    for fragment, what in _OTHER_LAYOUTS:
        if any(fragment in key for key in header):
            raise LoraFileError(f"{name}: {what} file; LoRA, LoHa and LoKr files in A1111's (kohya-ss, LyCORIS) "
                                "layout for SD 2.x are read")
    names = set(header)
    layers = tuple(sorted(_candidates(names).items()))
    for layer, kind in layers:
        if (missing := _missing(layer, kind, names)) is not None:
            raise LoraFileError(f"{name}: the layer {layer} lacks {missing[len(layer):]}")
    if not layers:
        raise LoraFileError(f"{name}: no LoRA layers (lora_unet_*/lora_te_* with lora_down and lora_up weights, "
                            "or LyCORIS LoHa or LoKr weights)")
    width = next((shape[1] for key, info in header.items() if key.endswith(CROSS_KEYS)
                  and len(shape := info.get("shape") or []) >= 2), None)
    if width == SD1_WIDTH:  # any other width is checked against the model when a job merges it
        raise LoraFileError(f"{name}: a LoRA for SD 1.x ({SD1_WIDTH}-wide text features); SD 2.x reads "
                            f"{SD2_WIDTH}-wide ones")
    return tuple(layer for layer, _ in layers)


def describe(path: Path) -> LoraFile:
    """Check one file's size and header (`scan_folder` checked its name); raises LoraFileError."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraFileError(f"{path.name}: a pickle file, which this app never opens (unpickling can run code); "
                            "use the .safetensors version of the LoRA")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise LoraFileError(f"{path.name}: {size} bytes; a LoRA file may have {MAX_FILE_BYTES} at most")
    return LoraFile(path.stem, path, size, _layers(safetensors_header(path, LoraFileError), path.name))


@dataclass(frozen=True)
class LoraLibrary:
    """The LoRA files of one folder as `scan` described them; immutable, so requests can share it freely (a folder
    whose files changed is read again into a new library: `sd2_app.api.watched_folder`)."""

    folder: Path | None = None
    files: dict[str, LoraFile] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # file name -> why it is not used
    stamp: tuple[tuple[str, int, int], ...] = ()  # the folder as it was scanned (`folder_stamp`)

    @classmethod
    def scan(cls, folder: str | Path | None) -> LoraLibrary:
        """Every LoRA file in `folder` (not recursive). A folder that does not exist is an empty library; files
        that cannot be used are logged and kept in `refused` with the reason."""
        if folder is None or not Path(folder).is_dir():
            return cls(None if folder is None else Path(folder))
        stamp = folder_stamp(Path(folder))  # before the scan: a file changed during it is scanned again next time
        found, refused = scan_folder(Path(folder), describe, LoraFileError, "LoRA")
        return cls(Path(folder), found, refused, stamp)

    def changed(self) -> bool:
        """Whether the folder holds other files than when it was scanned (`folder_changed`)."""
        return folder_changed(self.folder, self.stamp)

    def rescanned(self) -> LoraLibrary:
        return LoraLibrary.scan(self.folder)

    def names(self) -> list[str]:
        return sorted(self.files)
