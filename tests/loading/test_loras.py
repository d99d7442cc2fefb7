"""The LoRA folder (sd2_app/loading/loras.py): which files are used, and the exact reason for each one that is not;
only headers are read; the folder read again when its files change (sd2_app/api/watched_folder.py, through
`LoraTools`)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sd2_app.api.checks import catalog_of
from sd2_app.api.lora_tools import LoraTools
from sd2_app.loading.loras import LoraLibrary

LAYER = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def _lora(width: int = 1024, out: int = 320, layer: str = LAYER, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{layer}.lora_down.weight": torch.zeros(4, width), f"{layer}.lora_up.weight": torch.zeros(out, 4),
            f"{layer}.alpha": torch.tensor(4.0), **extra}


def _loha(width: int = 1024, out: int = 320, layer: str = LAYER) -> dict[str, torch.Tensor]:
    return {f"{layer}.hada_w1_a": torch.zeros(out, 4), f"{layer}.hada_w1_b": torch.zeros(4, width),
            f"{layer}.hada_w2_a": torch.zeros(out, 4), f"{layer}.hada_w2_b": torch.zeros(4, width),
            f"{layer}.alpha": torch.tensor(4.0)}


def _lokr(layer: str = LAYER) -> dict[str, torch.Tensor]:
    """A LoKr whose first factor is whole and whose second is two halves (320 x 1024 = (8 x 16) ⊗ (40 x 64))."""
    return {f"{layer}.lokr_w1": torch.zeros(8, 16), f"{layer}.lokr_w2_a": torch.zeros(40, 4),
            f"{layer}.lokr_w2_b": torch.zeros(4, 64), f"{layer}.alpha": torch.tensor(4.0)}


def _save(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(folder / name))


def test_usable_files_are_listed_and_every_other_is_explained(tmp_path: Path) -> None:
    _save(tmp_path, "detail.safetensors", _lora())
    _save(tmp_path, "te only.safetensors",
          _lora(64, 64, "lora_te_text_model_encoder_layers_0_self_attn_q_proj"))  # any width but SD 1.x's
    _save(tmp_path, "sd15.safetensors", _lora(768))
    _save(tmp_path, "loha.safetensors", {f"{LAYER}.hada_w1_a": torch.zeros(4, 4)})
    _save(tmp_path, "hada.safetensors", _loha())
    _save(tmp_path, "kron.safetensors", _lokr())
    _save(tmp_path, "hada15.safetensors", _loha(768))
    _save(tmp_path, "halfkron.safetensors", {f"{LAYER}.lokr_w1": torch.zeros(8, 16),
                                             f"{LAYER}.lokr_w2_a": torch.zeros(40, 4)})
    _save(tmp_path, "tucker.safetensors", {**_loha(), f"{LAYER}.hada_t1": torch.zeros(4, 4, 3, 3)})
    _save(tmp_path, "dora.safetensors", _lora(**{f"{LAYER}.dora_scale": torch.ones(1, 1024)}))
    _save(tmp_path, "xl.safetensors", _lora(layer="lora_te1_text_model_encoder_layers_0_self_attn_q_proj"))
    _save(tmp_path, "peft.safetensors", {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 4)})
    _save(tmp_path, "half.safetensors", {f"{LAYER}.lora_down.weight": torch.zeros(4, 1024)})
    _save(tmp_path, "empty.safetensors", {"something_else": torch.zeros(1)})
    _save(tmp_path, "-dash.safetensors", _lora())
    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    (tmp_path / "cut.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 3) + b"{x}")
    (tmp_path / "notes.txt").write_text("not a LoRA")
    library = LoraLibrary.scan(tmp_path)
    assert library.names() == ["detail", "hada", "kron", "te only"]
    assert library.files["detail"].layers == library.files["hada"].layers == library.files["kron"].layers == (LAYER,)
    pickle = "a pickle file, which this app never opens (unpickling can run code); use the .safetensors version"
    layout = "file; LoRA, LoHa and LoKr files in A1111's (kohya-ss, LyCORIS) layout for SD 2.x are read"
    assert library.refused == {
        "-dash.safetensors": "-dash.safetensors: the name must be letters, digits, '.', '-', '+', '_' or spaces (at "
                             "most 64), starting with a letter or digit",
        "cut.safetensors": "cut.safetensors: not a safetensors file (a 1000000000-byte header)",
        "dora.safetensors": f"dora.safetensors: a DoRA {layout}",
        "empty.safetensors": "empty.safetensors: no LoRA layers (lora_unet_*/lora_te_* with lora_down and lora_up "
                             "weights, or LyCORIS LoHa or LoKr weights)",
        "hada15.safetensors": "hada15.safetensors: a LoRA for SD 1.x (768-wide text features); SD 2.x reads 1024-wide "
                              "ones",
        "half.safetensors": f"half.safetensors: the layer {LAYER} lacks .lora_up.weight",
        "halfkron.safetensors": f"halfkron.safetensors: the layer {LAYER} lacks .lokr_w2_b",
        "junk.safetensors": "junk.safetensors: not a safetensors file (its header is no JSON)",
        "loha.safetensors": f"loha.safetensors: the layer {LAYER} lacks .hada_w1_b",
        "old.ckpt": f"old.ckpt: {pickle} of the LoRA",
        "peft.safetensors": f"peft.safetensors: a diffusers/PEFT {layout}",
        "sd15.safetensors": "sd15.safetensors: a LoRA for SD 1.x (768-wide text features); SD 2.x reads 1024-wide ones",
        "tucker.safetensors": f"tucker.safetensors: a LyCORIS LoHa with a Tucker core {layout}",
        "xl.safetensors": f"xl.safetensors: an SDXL {layout}",
    }


def test_a_duplicate_name_in_another_case_is_refused(tmp_path: Path) -> None:
    _save(tmp_path, "Detail.safetensors", _lora())
    _save(tmp_path, "detail.safetensors", _lora())
    library = LoraLibrary.scan(tmp_path)
    assert library.names() == ["Detail"]
    assert library.refused == {"detail.safetensors": "detail.safetensors: another file already has the name 'detail'"}


def test_only_the_header_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 GiB LoRA costs its header's bytes at start-up, not a gigabyte."""
    header = json.dumps({f"{LAYER}.lora_down.weight": {"dtype": "F32", "shape": [4, 1024], "data_offsets": [0, 0]},
                         f"{LAYER}.lora_up.weight": {"dtype": "F32", "shape": [320, 4], "data_offsets": [0, 0]}})
    path = tmp_path / "big.safetensors"
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(header)) + header.encode())
        file.truncate(2**30 - 1)  # sparse: no disk used
    library = LoraLibrary.scan(tmp_path)
    assert library.names() == ["big"] and library.files["big"].size == 2**30 - 1
    with path.open("r+b") as file:
        file.truncate(2**30 + 1)
    assert LoraLibrary.scan(tmp_path).refused == {
        "big.safetensors": f"big.safetensors: {2**30 + 1} bytes; a LoRA file may have {2**30} at most"}


def test_a_missing_folder_is_an_empty_library(tmp_path: Path) -> None:
    assert LoraLibrary.scan(tmp_path / "nope").names() == [] and LoraLibrary.scan(None).refused == {}


def test_the_library_is_read_again_when_a_file_is_added_rewritten_or_removed(tmp_path: Path) -> None:
    """Looked at on every use (`recheck_s` 0): a new file is listed, a rewritten one described again, a removed
    one gone, a folder made after start-up read; an unchanged folder is not scanned again (the same library)."""
    folder = tmp_path / "loras"
    tools = LoraTools(LoraLibrary.scan(folder))
    tools.watch.recheck_s = 0
    assert tools.names() == [] and not tools.library.changed()
    folder.mkdir()
    _save(folder, "detail.safetensors", _lora())
    assert tools.names() == ["detail"]
    before = tools.library
    assert tools.library is before  # nothing changed: no scan
    _save(folder, "detail.safetensors", _lora(768))  # rewritten for SD 1.x: refused now
    _save(folder, "style.safetensors", _lora())
    assert tools.names() == ["style"] and list(tools.refused()) == ["detail.safetensors"]
    (folder / "detail.safetensors").unlink()
    assert (tools.names(), tools.refused()) == (["style"], {})


def test_the_folder_is_looked_at_no_more_often_than_recheck_s_unless_refreshed(tmp_path: Path) -> None:
    """With the default pause between looks, a file added just now is listed after `refresh` (A1111's
    /refresh-loras); validation's catalog follows the folder (`current_in`), a given catalog without a folder
    does not."""
    _save(tmp_path, "detail.safetensors", _lora())
    tools = LoraTools(LoraLibrary.scan(tmp_path))
    tools.watch.recheck_s = 3600
    catalog = catalog_of({}, loras=["detail"])
    _save(tmp_path, "style.safetensors", _lora())
    assert tools.names() == ["detail"] and tools.current_in(catalog) is catalog
    assert tools.refresh().names() == ["detail", "style"] and tools.names() == ["detail", "style"]
    assert tools.current_in(catalog).loras == {"detail", "style"}
    assert LoraTools().current_in(catalog) is catalog  # no folder: the catalog's names stand
