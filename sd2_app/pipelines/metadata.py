"""A1111-style `parameters` text: what every PNG we write carries, and the parser that reads it back.

Format (the one AUTOMATIC1111's web UI writes, so other tools can read our images):

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, ...

The last line is `key: value` pairs separated by ", "; a value containing a comma, a colon or a quote is
written as a JSON string. Prompts may span several lines. Reading follows A1111's
modules/infotext_utils.py (`parse_generation_parameters`): trailing blank lines are ignored, the last line is the
settings line when at least three pairs are found in it (anything between pairs that is no pair is skipped), and
"Negative prompt:" starts the negative prompt with or without a space after the colon.
"""

from __future__ import annotations

import io
import json
import re
from concurrent.futures import Executor
from pathlib import Path
from typing import BinaryIO
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sd2_app.api.outputs import FAST_PNG_LEVEL
from sd2_app.infotext_keys import NEGATIVE_PROMPT, PARAMETERS_KEY, PROMPT, SIZE

# Machine-readable "AI generated" marker: an XMP packet (the PNG keyword XMP's specification, part 3, gives)
# stating IPTC's digital source type "trainedAlgorithmicMedia" (IPTC NewsCodes, digitalsourcetype), the
# term IPTC's Photo Metadata Standard defines for media made by a trained model; see docs/DESIGN.md.
XMP_KEY = "XML:com.adobe.xmp"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
AI_GENERATED_XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="{_IPTC_EXT}" '
    f'Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}"/>'
    '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
)
_NEGATIVE = f"{NEGATIVE_PROMPT}:"
SettingValue = str | int | float | bool | None  # one value of the settings line (None: left out when written)
Settings = dict[str, SettingValue]  # the settings line's pairs, in their order
# The start of one `key: value` pair of the settings line, and a value written as a JSON string.
_KEY = re.compile(r"\s*([\w./+\-()][\w ./+\-()]*):\s*")
_QUOTED = re.compile(r'"(?:\\.|[^\\"])*"')
MIN_SETTINGS_PAIRS = 3  # A1111 reads a last line with fewer pairs as part of the prompt


def _quote(value: str) -> str:
    """JSON-quote a string that would not read back as itself (commas, colons, numbers, padding)."""
    plain = value and value == value.strip() and not any(c in value for c in ',:"\n\\')
    if plain and _parse_value(value) == value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _format_value(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    return _quote(str(value))


def format_parameters(prompt: str, negative_prompt: str, settings: Settings) -> str:
    """Build the text; `settings` keeps its order (Steps, Sampler, ... first by convention)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{_NEGATIVE} {negative_prompt}")
    lines.append(", ".join(f"{key}: {_format_value(value)}" for key, value in settings.items() if value is not None))
    return "\n".join(lines)


# Digits of the longest whole number read as an int: one with more is read as a float (1e+20; inf past 308 digits).
# JSON carries whole numbers of 64 bits at most (orjson refuses more: the PNG info box's fields, the A1111 API's
# answer), and Python's int() refuses over 4,300 digits (ValueError).
MAX_WHOLE_DIGITS = 18


def whole_number(raw: str) -> int | float:
    """The whole number `raw` (digits, an optional sign): an int, or a float past `MAX_WHOLE_DIGITS` digits."""
    return int(raw) if len(raw.lstrip("+-")) <= MAX_WHOLE_DIGITS else float(raw)


def _parse_value(raw: str) -> SettingValue:
    raw = raw.strip()
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        try:
            return json.loads(raw)
        except ValueError:  # not JSON after all ('"\\x"'): the text as it is, as A1111's `unquote` keeps it
            return raw
    if re.fullmatch(r"[+-]?\d+", raw):
        return whole_number(raw)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)(e[+-]?\d+)?", raw, re.IGNORECASE):
        return float(raw)
    if raw in ("True", "False"):
        return raw == "True"
    return raw


def _settings_pairs(line: str) -> list[tuple[str, str]]:
    """The (key, raw value) pairs of a settings line, in order: a pair starts the line or follows a comma, and
    a stretch between commas that is no pair is skipped (A1111's `re_param`, found anywhere by `findall`).

    One pass over the line (a regex searched from every position, as A1111's is, takes time quadratic in the
    line's length: minutes for the megabyte a PNG text chunk may hold): each key is matched where a pair may
    start, and a quote that is never closed is looked for once.
    """
    pairs: list[tuple[str, str]] = []
    position, unclosed_from = 0, len(line) + 1  # from `unclosed_from` on, no quote closes
    while position <= len(line):
        key = _KEY.match(line, position)
        comma = line.find(",", position)
        end = len(line) if comma == -1 else comma
        if key is None or key.end() > end:
            position = end + 1
            continue
        start = key.end()
        quoted = _QUOTED.match(line, start) if line.startswith('"', start) and start < unclosed_from else None
        if quoted is None and line.startswith('"', start):
            unclosed_from = min(unclosed_from, start)
        elif quoted is not None:  # a closed quote counts only when the pair ends there (else: text to the comma)
            after = line.find(",", quoted.end())
            if line[quoted.end():len(line) if after == -1 else after].strip():
                quoted = None
            else:
                end = len(line) if after == -1 else after
        pairs.append((key.group(1).strip(), line[start:end].strip() if quoted is None else quoted.group(0)))
        position = end + 1
    return pairs


def parse_parameters(text: str) -> Settings:
    """Inverse of `format_parameters`: {"Prompt", "Negative prompt", then every setting with typed values}.

    Numbers come back as int/float, True/False as bool, quoted strings unquoted. "Size: WxH" stays a string;
    `size_of(params)` turns it into (width, height). Text from other tools is read by A1111's rules (see the
    module's docstring).
    """
    lines = text.rstrip().split("\n")  # trailing blank lines are not part of the text
    settings: Settings = {}
    pairs = _settings_pairs(lines[-1].strip())
    if len(pairs) >= MIN_SETTINGS_PAIRS:
        settings = {key: _parse_value(raw) for key, raw in pairs}
        lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if not in_negative and line.startswith(_NEGATIVE):
            in_negative = True
            rest = line[len(_NEGATIVE):]
            negative_lines.append(rest[1:] if rest.startswith(" ") else rest)
        elif in_negative:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return {PROMPT: "\n".join(prompt_lines), NEGATIVE_PROMPT: "\n".join(negative_lines), **settings}


def size_of(params: Settings) -> tuple[int, int] | None:
    """(width, height) from a parsed "Size: 512x768" entry, or None."""
    size = params.get(SIZE)
    match = re.fullmatch(r"(\d+)x(\d+)", str(size)) if size is not None else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def attach_parameters(image: Image.Image, text: str) -> Image.Image:
    """Store the text in `image.info` so `save_png` (and Gradio's PNG export) writes it as a tEXt chunk."""
    image.info[PARAMETERS_KEY] = text
    return image


def mark_ai_generated(image: Image.Image) -> Image.Image:
    """Store the "AI generated" XMP packet in `image.info` (written by `save_png`, and by Gradio as text)."""
    image.info[XMP_KEY] = AI_GENERATED_XMP
    return image


def digital_source_type(image: Image.Image | str | Path) -> str | None:
    """The IPTC digital source type in a PNG's XMP packet (an open image or a path), or None."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            opened.load()
            packet = opened.info.get(XMP_KEY)
    else:
        packet = image.info.get(XMP_KEY)
    match = re.search(r'Iptc4xmpExt:DigitalSourceType="([^"]*)"', packet) if isinstance(packet, str) else None
    return match.group(1) if match else None


def png_info(image: Image.Image) -> PngInfo:
    """The PNG text chunks for an image that carries `info["parameters"]` (and the XMP marker, if set)."""
    info = PngInfo()
    text = image.info.get(PARAMETERS_KEY)
    if text is not None:
        info.add_text(PARAMETERS_KEY, text)
    packet = image.info.get(XMP_KEY)
    if isinstance(packet, str):
        info.add_itxt(XMP_KEY, packet)  # XMP's PNG embedding: an uncompressed iTXt chunk
    return info


def encode_png(image: Image.Image, compress_level: int = FAST_PNG_LEVEL) -> bytes:
    """The PNG file of `image` with its text chunks (`png_info`), as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(image), compress_level=compress_level)
    return buffer.getvalue()


def encode_pngs(images: list[Image.Image], pool: Executor | None = None) -> list[bytes]:
    """`encode_png` of each image, in order; with `pool`, a batch's images at once on its threads (PIL's zlib
    encoder releases the GIL while it compresses)."""
    if pool is None or len(images) < 2:
        return [encode_png(image) for image in images]
    return list(pool.map(encode_png, images))


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG with its `parameters` text chunk (PIL does not write `info` on its own)."""
    path = Path(path)
    image.save(path, format="PNG", pnginfo=png_info(image))
    return path


def read_png_parameters(image: Image.Image | str | Path | BinaryIO) -> str | None:
    """The `parameters` text of a PNG (an open image, a path or a binary stream), or None when it has none.

    A path or a stream is read chunk by chunk without decoding any pixels (`png_text`).
    """
    if isinstance(image, (str, Path)):
        return png_text(Path(image), PARAMETERS_KEY)
    if not isinstance(image, Image.Image):
        return png_text(image, PARAMETERS_KEY)
    text = image.info.get(PARAMETERS_KEY)
    if text is None and hasattr(image, "text"):
        text = image.text.get(PARAMETERS_KEY)
    return text


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PARAMETERS_CHARS = 20_000  # the longest parameters text read, from a PNG or pasted; A1111's are a few KB
# Chunks read before the parameters are given up on: a PNG of the upload size written in libpng's 8 KiB IDAT
# chunks has about 3,200; one of empty chunks has millions, each a step of the loop below.
MAX_PNG_CHUNKS = 10_000
MAX_TEXT_BYTES = 4 * MAX_PARAMETERS_CHARS  # a longer (decompressed) text chunk is not parameters (UTF-8: 4 a char)


def _text_of(kind: bytes, data: bytes, key: str) -> str | None:
    """The text of a tEXt/zTXt/iTXt chunk whose keyword is `key` (PNG spec 11.3.4), else None. A text over
    MAX_PARAMETERS_CHARS raises OSError: reading a settings line costs time in its length, and a zTXt chunk of a
    few KB inflates to a megabyte."""
    keyword, _, rest = data.partition(b"\0")
    if keyword.decode("latin-1") != key:
        return None
    text = _decoded(kind, rest)
    if len(text) > MAX_PARAMETERS_CHARS:
        raise OSError(f"a PNG parameters text is longer than {MAX_PARAMETERS_CHARS:,} characters")
    return text


def _decoded(kind: bytes, rest: bytes) -> str:
    """The text of a tEXt/zTXt/iTXt chunk after its keyword."""
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":  # compression method byte, then zlib data
        return _inflate(rest[1:]).decode("latin-1")
    if len(rest) < 2:
        raise OSError("a PNG iTXt chunk is cut short")
    compressed, _method, rest = rest[0], rest[1], rest[2:]  # iTXt: flag, method, language\0, translated\0, text
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    return (_inflate(text) if compressed else text).decode("utf-8", errors="replace")


def _inflate(data: bytes) -> bytes:
    import zlib

    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error as error:
        raise OSError(f"a PNG text chunk is not valid zlib data ({error})") from error
    if inflater.unconsumed_tail:
        raise OSError("a PNG text chunk is too long")
    return out


def png_text(source: Path | BinaryIO, key: str) -> str | None:
    """The text stored under `key` in a PNG's text chunks (a file, or a binary stream read from where it is),
    reading chunk headers only (no pixel is decoded).

    Raises OSError for data that is not a PNG, is cut short before its text or holds more than MAX_PNG_CHUNKS
    chunks before it.
    """
    if isinstance(source, Path):
        with open(source, "rb") as file:
            return png_text(file, key)
    if source.read(8) != PNG_SIGNATURE:
        raise OSError("not a PNG file")
    for _ in range(MAX_PNG_CHUNKS):
        header = source.read(8)
        if len(header) < 8:
            return None
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        if kind in (b"tEXt", b"zTXt", b"iTXt") and length <= MAX_TEXT_BYTES:
            data = source.read(length)
            if len(data) < length:
                raise OSError("the PNG file is truncated")
            text = _text_of(kind, data, key)
            if text is not None:
                return text
            source.seek(4, 1)  # CRC
        elif kind == b"IEND":
            return None
        else:
            source.seek(length + 4, 1)  # skip the data (pixels included) and the CRC
    raise OSError(f"the PNG has more than {MAX_PNG_CHUNKS:,} chunks before its text")
