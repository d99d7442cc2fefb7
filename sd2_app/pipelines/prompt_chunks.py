"""A parsed prompt -> 77-token chunks for the CLIP text encoder, each token with its weight.

CLIP reads 77 positions: BOS, 75 prompt tokens, EOS. A longer prompt is cut into chunks of 75 tokens, each
encoded on its own as BOS + tokens + EOS + padding (id 0 after the EOS, SD2's rule and the one our single
77-token path always used), and the states are concatenated. The rules follow A1111's
modules/sd_hijack_clip.py (`tokenize_line`): a BREAK ends the chunk early; when a chunk fills up and its last
comma is at most 20 tokens back, the tokens after that comma move to the next chunk, so a phrase is not cut;
a textual-inversion embedding's vectors never straddle two chunks. The token count is A1111's too: 75 per
finished chunk plus the tokens of the last one (the counter's "93/150").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sd2_app.errors import InvalidRequest
from sd2_app.prompt_syntax import Run, parse_attention

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from sd2_app.loading.embeddings import TextualInversion

CHUNK_TOKENS = 75  # prompt tokens per chunk
CHUNK_LENGTH = CHUNK_TOKENS + 2  # with BOS and EOS: the text encoder's 77 positions
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`
MAX_CHUNKS = 8  # 600 prompt tokens; past that a prompt is refused (each chunk costs a text-encoder row)
PAD_ID = 0  # SD2 pads with "!" (id 0); the tokenizer loader refuses any other


@dataclass
class Chunk:
    """One encoder row: 77 ids, 77 weights, and where embeddings' vectors replace the token embeddings."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    inserts: list[tuple[int, TextualInversion]] = field(default_factory=list)  # (position in ids, embedding)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


@dataclass
class TokenizedPrompt:
    chunks: list[Chunk]  # at least one
    token_count: int  # A1111's count: 75 per finished chunk + the last chunk's tokens
    embeddings: list[TextualInversion]  # the embeddings used, in order of first use

    @property
    def token_limit(self) -> int:
        """What the counter shows after the slash: 75 per chunk."""
        return CHUNK_TOKENS * len(self.chunks)


def check_length(tokens: TokenizedPrompt, label: str) -> None:
    """Refuse a prompt over MAX_CHUNKS chunks, saying by how much."""
    if len(tokens.chunks) > MAX_CHUNKS:
        raise InvalidRequest(
            f"The {label} is too long: it makes {len(tokens.chunks)} chunks of {CHUNK_TOKENS} tokens "
            f"({tokens.token_count} tokens, BREAKs included); at most {MAX_CHUNKS} chunks "
            f"({MAX_CHUNKS * CHUNK_TOKENS} tokens) are allowed. Shorten it or remove a BREAK."
        )


# first token id of a name -> [(the name's token ids, its embedding)]
EmbeddingIndex = dict[int, list[tuple[list[int], "TextualInversion"]]]


def _embedding_index(tokenizer: CLIPTokenizer, embeddings: Mapping[str, TextualInversion]) -> EmbeddingIndex:
    """First token id -> [(the name's token ids, embedding)], longest name first (A1111 matches the longest)."""
    index: EmbeddingIndex = {}
    if not embeddings:
        return index
    names = tokenizer(list(embeddings), add_special_tokens=False, truncation=False, verbose=False).input_ids
    for ids, embedding in zip(names, embeddings.values()):
        if ids:
            index.setdefault(ids[0], []).append((ids, embedding))
    for entries in index.values():
        entries.sort(key=lambda entry: -len(entry[0]))
    return index


def _match(tokens: Sequence[int], position: int, index: EmbeddingIndex) -> tuple[TextualInversion | None, int]:
    for ids, embedding in index.get(tokens[position], ()):
        if list(tokens[position:position + len(ids)]) == ids:
            return embedding, len(ids)
    return None, 0


class _Builder:
    """The chunk being filled, the finished ones and the running count (A1111's `next_chunk` state)."""

    def __init__(self, bos: int, eos: int) -> None:
        self.bos, self.eos = bos, eos
        self.chunks: list[Chunk] = []
        self.current = Chunk()
        self.count = 0
        self.last_comma = -1  # index in current.ids of its last comma, -1 when none

    def finish(self, last: bool = False) -> None:
        chunk = self.current
        self.count += len(chunk.ids) if last else CHUNK_TOKENS
        pad = CHUNK_TOKENS - len(chunk.ids)
        chunk.ids = [self.bos, *chunk.ids, self.eos] + [PAD_ID] * pad
        chunk.weights = [1.0, *chunk.weights, 1.0] + [1.0] * pad
        chunk.inserts = [(offset + 1, embedding) for offset, embedding in chunk.inserts]  # after BOS
        self.chunks.append(chunk)
        self.current = Chunk()
        self.last_comma = -1

    def backtrack_to_comma(self) -> None:
        """The chunk is full and a comma is near its end: move what follows the comma to a new chunk."""
        cut = self.last_comma + 1
        chunk = self.current
        moved = Chunk(chunk.ids[cut:], chunk.weights[cut:], [(at - cut, e) for at, e in chunk.inserts if at >= cut])
        chunk.ids, chunk.weights = chunk.ids[:cut], chunk.weights[:cut]
        chunk.inserts = [(at, e) for at, e in chunk.inserts if at < cut]
        self.finish()
        self.current = moved


def tokenize_prompt(tokenizer: CLIPTokenizer, prompt: str,
                    embeddings: Mapping[str, TextualInversion] | None = None) -> TokenizedPrompt:
    """Parse `prompt` and cut it into chunks. Never raises on any text; the caller enforces MAX_CHUNKS."""
    return tokenize_prompts(tokenizer, [prompt], embeddings)[0]


def tokenize_prompts(tokenizer: CLIPTokenizer, prompts: Sequence[str],
                     embeddings: Mapping[str, TextualInversion] | None = None) -> list[TokenizedPrompt]:
    """`tokenize_prompt` of each of `prompts`, with one tokenizer call for all their text (and one for the
    embeddings' names)."""
    parsed = [parse_attention(prompt) for prompt in prompts]
    texts = [run.text for runs in parsed for run in runs if not run.is_break]
    # no text at all (prompts of BREAKs only): nothing to tokenize, and the tokenizer refuses an empty batch
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids if texts else []
    token_lists = iter(ids)
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    index = _embedding_index(tokenizer, embeddings or {})
    tokenized = []
    for runs in parsed:
        build = _Builder(tokenizer.bos_token_id, tokenizer.eos_token_id)
        used: dict[str, TextualInversion] = {}
        for run in runs:
            if run.is_break:
                build.finish()
                continue
            _add_run(build, run, next(token_lists), comma, index, used)
        if build.current.ids or not build.chunks:
            build.finish(last=True)
        tokenized.append(TokenizedPrompt(build.chunks, build.count, list(used.values())))
    return tokenized


def _add_run(build: _Builder, run: Run, tokens: Sequence[int], comma: int,
             index: EmbeddingIndex, used: dict[str, TextualInversion]) -> None:
    position = 0
    while position < len(tokens):
        token = tokens[position]
        chunk = build.current
        if token == comma:
            build.last_comma = len(chunk.ids)
        elif (len(chunk.ids) == CHUNK_TOKENS and build.last_comma != -1
              and len(chunk.ids) - build.last_comma <= COMMA_BACKTRACK):
            build.backtrack_to_comma()
        if len(build.current.ids) == CHUNK_TOKENS:
            build.finish()
        embedding, length = _match(tokens, position, index) if index else (None, 0)
        if embedding is None:
            build.current.ids.append(token)
            build.current.weights.append(run.weight)
            position += 1
            continue
        if len(build.current.ids) + embedding.count > CHUNK_TOKENS:
            build.finish()
        build.current.inserts.append((len(build.current.ids), embedding))
        build.current.ids += [PAD_ID] * embedding.count  # placeholders; their rows are replaced
        build.current.weights += [run.weight] * embedding.count
        used.setdefault(embedding.name, embedding)
        position += length


def empty_chunk(tokenizer: CLIPTokenizer) -> Chunk:
    """The chunk of an empty prompt (BOS, EOS, padding; what `tokenize_prompt` makes of ""): what pads the
    shorter of prompt and negative prompt. Nothing to tokenize."""
    build = _Builder(tokenizer.bos_token_id, tokenizer.eos_token_id)
    build.finish(last=True)
    return build.chunks[0]
