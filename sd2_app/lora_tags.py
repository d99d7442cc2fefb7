"""LoRA tags in a prompt, read as AUTOMATIC1111's web UI reads them: `<lora:name>`, `<lora:name:0.8>`,
`<lora:name:0.8:0.5>` (text encoder, then UNet multiplier) and the named forms `te=0.8` and `unet=0.5`.

A1111 modules/extra_networks.py (`parse_prompt`, `ExtraNetworkParams`) splits each `<kind:args>` tag's args at
":" into positional and `key=value` items; the built-in Lora extension (extensions-builtin/Lora/
extra_networks_lora.py, `activate`) reads the name, the text-encoder multiplier (default 1) and the UNet
multiplier (default: the text encoder's). `<lyco:...>` is the same as `<lora:...>` there and here. The tags are
taken out of the prompt before it is read (`prompt_syntax.without_extra_networks`); only the prompt's tags
count, not the negative prompt's (A1111 reads those as text). No torch: validation and the UI use this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sd2_app.errors import InvalidRequest
from sd2_app.prompt_syntax import EXTRA_NETWORK

LORA_KINDS = ("lora", "lyco")
MAX_LORAS = 8  # distinct LoRAs one prompt may use (each is read from disk and merged into the weights)
MAX_MULTIPLIER = 10.0  # |multiplier| at most; far beyond any LoRA's useful range


@dataclass(frozen=True)
class LoraTag:
    """One LoRA a prompt asks for: its name and the multipliers of its text-encoder and UNet layers."""

    name: str
    te: float = 1.0
    unet: float = 1.0


def _multiplier(raw: str, tag: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > MAX_MULTIPLIER:
        raise InvalidRequest(f"The LoRA tag {tag} has the multiplier {raw.strip()!r}; a multiplier is a number "
                             f"from -{MAX_MULTIPLIER:g} to {MAX_MULTIPLIER:g}.")
    return value


def _tag(kind_and_args: str) -> LoraTag | None:
    """The LoraTag of one `<kind:args>` tag's text, or None when it is no LoRA tag."""
    kind, _, args = kind_and_args[1:-1].partition(":")
    if kind not in LORA_KINDS:
        return None
    items = args.split(":")
    positional = [item for item in items if "=" not in item]
    named = dict(item.split("=", 1) for item in items if "=" in item)
    name = positional[0].strip() if positional else ""
    if not name:
        raise InvalidRequest(f"The LoRA tag {kind_and_args} names no LoRA; write <lora:NAME:0.8>.")
    te = _multiplier(positional[1], kind_and_args) if len(positional) > 1 else 1.0
    te = _multiplier(named["te"], kind_and_args) if "te" in named else te
    unet = _multiplier(positional[2], kind_and_args) if len(positional) > 2 else te
    unet = _multiplier(named["unet"], kind_and_args) if "unet" in named else unet
    return LoraTag(name, te, unet)


def lora_tags(prompt: str) -> tuple[LoraTag, ...]:
    """The LoRAs `prompt` asks for, in order of first mention; a name given twice has its multipliers added
    (A1111 applies such a LoRA twice over). Raises InvalidRequest for a tag without a name or with a multiplier
    that is not a number within ±MAX_MULTIPLIER, and for more than MAX_LORAS names."""
    found: dict[str, LoraTag] = {}
    for match in EXTRA_NETWORK.finditer(prompt):
        tag = _tag(match.group(0))
        if tag is None:
            continue
        kept = found.get(tag.name)
        found[tag.name] = tag if kept is None else LoraTag(tag.name, kept.te + tag.te, kept.unet + tag.unet)
    if len(found) > MAX_LORAS:
        raise InvalidRequest(f"The prompt names {len(found)} LoRAs; at most {MAX_LORAS} are used at once.")
    return tuple(found.values())


def without_lora_tags(prompt: str) -> str:
    """`prompt` with its LoRA tags taken out (other extra-network tags stay)."""
    return EXTRA_NETWORK.sub(lambda match: "" if is_lora_tag(match.group(0)) else match.group(0), prompt)


def is_lora_tag(tag_text: str) -> bool:
    """Whether one extra-network tag's text (`<kind:args>`) is a LoRA's."""
    return tag_text[1:].partition(":")[0] in LORA_KINDS
