"""Prompt encoding on the tiny checkpoint: chunks, weights, padding, embeddings (issue 20).

Every expectation is built here from the tokenizer and the text encoder directly (ids by hand, weights by
hand, the restore-mean rule in float64), never by calling the code under test a second way.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sd2_app.errors import InvalidRequest
from sd2_app.loading.embeddings import EmbeddingError, EmbeddingLibrary, TextualInversion, load_embedding
from sd2_app.pipelines.prompt import prompt_settings
from sd2_app.testing.prompt_pair import encode_prompt_pair
from sd2_app.nn.clip_text import text_model_of
from sd2_app.pipelines.prompt_chunks import tokenize_prompt

ROOT = Path(__file__).resolve().parents[2]

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parts(components):
    c = components("sd2-base")
    return c.text_encoder, c.tokenizer


def words(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def row(tokenizer, tokens: list[int]) -> list[int]:
    """BOS + tokens + EOS, padded with id 0 to 77: the layout of one chunk."""
    ids = [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id]
    return ids + [0] * (77 - len(ids))


def encode_rows(text_encoder, rows: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(torch.tensor(rows))[0]


def old_context(text_encoder, tokenizer, prompt: str, negative: str, batch: int) -> torch.Tensor:
    """What the app computed before issue 20: one 77-token row each, uncond first, expanded to the batch."""
    ids = [tokenizer(t, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
           for t in (negative, prompt)]
    with torch.no_grad():
        hidden = text_encoder(torch.cat(ids))[0]
    return torch.cat([h[None].expand(batch, -1, -1) for h in hidden]).contiguous()


@pytest.mark.parametrize("prompt, negative", [("a red hat", ""), ("the cat, and the dog", "blurry, low quality"),
                                              ("x" * 74, "y"), ("", "")])
def test_plain_prompt_is_bit_identical_to_the_old_path(parts, prompt: str, negative: str) -> None:
    text_encoder, tokenizer = parts
    encoded = encode_prompt_pair(text_encoder, tokenizer, prompt, negative, batch_size=2, use_cfg=True, device=CPU)
    assert torch.equal(encoded.context, old_context(text_encoder, tokenizer, prompt, negative, 2))
    assert encoded.embeddings == []


def expected_weighted(states: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's "Original" emphasis in float64: scale each row, then restore the chunk's mean."""
    z = states.double()
    w = torch.tensor(weights, dtype=torch.float64)[:, None]
    scaled = z * w
    return (scaled * (z.mean() / scaled.mean())).float()


def test_weighted_tokens_are_scaled_then_mean_restored(parts) -> None:
    text_encoder, tokenizer = parts
    red, hat = words(tokenizer, "red"), words(tokenizer, " hat")
    ids = row(tokenizer, red + hat)
    weights = [1.0] + [1.5] * len(red) + [1.0] * len(hat) + [1.0] * (77 - 1 - len(red) - len(hat))
    plain = encode_rows(text_encoder, [ids])[0]
    encoded = encode_prompt_pair(text_encoder, tokenizer, "(red:1.5) hat", "", batch_size=1, use_cfg=False,
                                 device=CPU)
    assert encoded.context.shape == (1, 77, 32)
    torch.testing.assert_close(encoded.context[0], expected_weighted(plain, weights), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(encoded.context[0], plain)  # the weight did something
    assert encoded.context[0].mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)


def test_nested_and_square_weights(parts) -> None:
    text_encoder, tokenizer = parts
    a, b = words(tokenizer, "a "), words(tokenizer, "b")
    weights = [1.0] + [1.21] * len(a) + [1 / 1.1] * len(b)
    weights += [1.0] * (77 - len(weights))
    plain = encode_rows(text_encoder, [row(tokenizer, a + b)])[0]
    encoded = encode_prompt_pair(text_encoder, tokenizer, "((a ))[b]", "", batch_size=1, use_cfg=False, device=CPU)
    torch.testing.assert_close(encoded.context[0], expected_weighted(plain, weights), rtol=1e-5, atol=1e-6)


def test_chunks_of_75_and_the_counter(parts) -> None:
    text_encoder, tokenizer = parts
    prompt = "a " * 100
    tokens = words(tokenizer, prompt)
    assert len(tokens) == 100
    got = tokenize_prompt(tokenizer, prompt)
    assert [c.ids for c in got.chunks] == [row(tokenizer, tokens[:75]), row(tokenizer, tokens[75:])]
    assert (got.token_count, got.token_limit) == (100, 150)
    context = encode_prompt_pair(text_encoder, tokenizer, prompt, "", batch_size=1, use_cfg=False,
                                 device=CPU).context
    assert context.shape == (1, 154, 32)
    expected = encode_rows(text_encoder, [row(tokenizer, tokens[:75]), row(tokenizer, tokens[75:])])
    torch.testing.assert_close(context[0], expected.reshape(154, 32), rtol=1e-6, atol=1e-6)


def test_a_full_chunk_closes_with_a_comma_backtrack(parts) -> None:
    _, tokenizer = parts
    a, comma, b = words(tokenizer, "a")[0], words(tokenizer, ",")[0], words(tokenizer, "b")[0]
    got = tokenize_prompt(tokenizer, "a " * 70 + ", " + "b " * 10)
    # 70 a's and the comma end chunk 1 (the comma is 5 tokens back when it fills); the b's move to chunk 2
    assert [c.ids for c in got.chunks] == [row(tokenizer, [a] * 70 + [comma]), row(tokenizer, [b] * 10)]
    assert (got.token_count, got.token_limit) == (85, 150)


def test_no_backtrack_when_the_comma_is_more_than_20_tokens_back(parts) -> None:
    _, tokenizer = parts
    a, comma, b = words(tokenizer, "a")[0], words(tokenizer, ",")[0], words(tokenizer, "b")[0]
    got = tokenize_prompt(tokenizer, "a " * 50 + ", " + "b " * 40)
    assert [c.ids for c in got.chunks] == [row(tokenizer, [a] * 50 + [comma] + [b] * 24), row(tokenizer, [b] * 16)]


def test_a_prompt_of_breaks_only_is_empty_chunks(parts) -> None:
    """A1111's tokenize_line on "BREAK": one empty chunk, 75 counted (the tokenizer is not called with no text:
    it refuses an empty batch)."""
    text_encoder, tokenizer = parts
    empty = tokenize_prompt(tokenizer, "").chunks[0]
    for prompt, chunks in [("BREAK", 1), (" BREAK BREAK ", 2)]:
        got = tokenize_prompt(tokenizer, prompt)
        assert [c.ids for c in got.chunks] == [empty.ids] * chunks
        assert (got.token_count, got.token_limit) == (75 * chunks, 75 * chunks)
    context = encode_prompt_pair(text_encoder, tokenizer, "BREAK", "BREAK", batch_size=1, use_cfg=True,
                                 device=CPU).context
    assert context.shape == (2, 77, 32)


def test_break_starts_a_new_chunk(parts) -> None:
    text_encoder, tokenizer = parts
    got = tokenize_prompt(tokenizer, "a BREAK b")
    assert [c.ids for c in got.chunks] == [row(tokenizer, words(tokenizer, "a")), row(tokenizer, words(tokenizer, "b"))]
    assert (got.token_count, got.token_limit) == (76, 150)
    context = encode_prompt_pair(text_encoder, tokenizer, "a BREAK b", "", batch_size=1, use_cfg=False,
                                 device=CPU).context
    assert context.shape == (1, 154, 32)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shorter_negative_prompt_is_padded_with_empty_chunks(parts, k: int) -> None:
    text_encoder, tokenizer = parts
    prompt = " BREAK ".join(["a"] * k)
    context = encode_prompt_pair(text_encoder, tokenizer, prompt, "blurry", batch_size=2, use_cfg=True,
                                 device=CPU).context
    assert context.shape == (4, 77 * k, 32)
    assert encode_prompt_pair(text_encoder, tokenizer, prompt, "blurry", batch_size=2, use_cfg=True,
                              device=CPU).padded is (k > 1)  # A1111's "Pad conds"
    expected_uncond = encode_rows(text_encoder, [row(tokenizer, words(tokenizer, "blurry"))]
                                  + [row(tokenizer, [])] * (k - 1)).reshape(77 * k, 32)
    torch.testing.assert_close(context[0], expected_uncond, rtol=1e-6, atol=1e-6)
    assert torch.equal(context[0], context[1]) and torch.equal(context[2], context[3])


def test_longer_negative_prompt_pads_the_prompt(parts) -> None:
    text_encoder, tokenizer = parts
    context = encode_prompt_pair(text_encoder, tokenizer, "cat", "a BREAK b BREAK c", batch_size=1, use_cfg=True,
                                 device=CPU).context
    assert context.shape == (2, 231, 32)
    assert encode_prompt_pair(text_encoder, tokenizer, "cat", "a BREAK b BREAK c", batch_size=1, use_cfg=True,
                              device=CPU).padded
    assert not encode_prompt_pair(text_encoder, tokenizer, "a BREAK b", "", batch_size=1, use_cfg=False,
                                  device=CPU).padded  # no guidance: no negative prompt to pad to
    expected_cond = encode_rows(text_encoder, [row(tokenizer, words(tokenizer, "cat")), row(tokenizer, []),
                                               row(tokenizer, [])]).reshape(231, 32)
    torch.testing.assert_close(context[1], expected_cond, rtol=1e-6, atol=1e-6)


def test_prompt_over_eight_chunks_is_refused(parts) -> None:
    text_encoder, tokenizer = parts
    with pytest.raises(InvalidRequest) as info:
        encode_prompt_pair(text_encoder, tokenizer, " BREAK ".join(["a"] * 9), "", batch_size=1, use_cfg=True,
                           device=CPU)
    assert str(info.value) == ("The prompt is too long: it makes 9 chunks of 75 tokens (601 tokens, BREAKs "
                               "included); at most 8 chunks (600 tokens) are allowed. Shorten it or remove a BREAK.")
    with pytest.raises(InvalidRequest, match="^The negative prompt is too long: it makes 9 chunks"):
        encode_prompt_pair(text_encoder, tokenizer, "a", "b " * 601, batch_size=1, use_cfg=True, device=CPU)
    context = encode_prompt_pair(text_encoder, tokenizer, "a " * 600, "", batch_size=1, use_cfg=True,
                                 device=CPU).context
    assert context.shape == (2, 8 * 77, 32)


# ---- embeddings ---------------------------------------------------------------------------------------------

def _embedding_of(text_encoder, tokenizer, text: str, name: str = "pets") -> TextualInversion:
    """An embedding whose vectors are the token embeddings of `text`: using it must equal writing `text`."""
    with torch.no_grad():
        vectors = text_model_of(text_encoder).embeddings.token_embedding(torch.tensor(words(tokenizer, text))).clone()
    return TextualInversion(name, vectors, "0" * 12)


def test_embedding_vectors_take_their_positions(parts) -> None:
    text_encoder, tokenizer = parts
    pets = _embedding_of(text_encoder, tokenizer, "cat dog")
    assert pets.count == 2
    got = tokenize_prompt(tokenizer, "a pets hat", {"pets": pets})
    assert [(at, e.name) for at, e in got.chunks[0].inserts] == [(1 + len(words(tokenizer, "a")), "pets")]
    assert got.token_count == len(words(tokenizer, "a hat")) + 2
    with_embedding = encode_prompt_pair(text_encoder, tokenizer, "a pets hat", "", batch_size=1, use_cfg=False,
                                        device=CPU, embeddings={"pets": pets})
    written_out = encode_prompt_pair(text_encoder, tokenizer, "a cat dog hat", "", batch_size=1, use_cfg=False,
                                     device=CPU).context
    torch.testing.assert_close(with_embedding.context, written_out, rtol=1e-5, atol=1e-5)
    assert [e.name for e in with_embedding.embeddings] == ["pets"]
    no_loras, two_loras = SimpleNamespace(loras=()), SimpleNamespace(loras=(("a:b,c", "1" * 12), ("d", "2" * 12)))
    assert prompt_settings(with_embedding.embeddings, no_loras) == {"TI hashes": "pets: 000000000000"}
    assert prompt_settings([], two_loras) == {"Lora hashes": "abc: 111111111111, d: 222222222222"}
    assert prompt_settings([], no_loras, padded=True) == {"Pad conds": True}


def test_embedding_never_straddles_chunks(parts) -> None:
    text_encoder, tokenizer = parts
    pets = _embedding_of(text_encoder, tokenizer, "cat dog")
    got = tokenize_prompt(tokenizer, "a " * 74 + "pets", {"pets": pets})
    assert len(got.chunks) == 2 and got.chunks[1].inserts[0][0] == 1  # both vectors open chunk 2
    assert got.chunks[0].ids[75] == tokenizer.eos_token_id  # chunk 1: 74 a's, then EOS


def test_weighted_embedding_and_no_embedding_outside_the_library(parts) -> None:
    text_encoder, tokenizer = parts
    pets = _embedding_of(text_encoder, tokenizer, "cat dog")
    got = tokenize_prompt(tokenizer, "(pets:1.4)", {"pets": pets})
    assert got.chunks[0].weights[1:3] == [1.4, 1.4]
    assert tokenize_prompt(tokenizer, "pets").chunks[0].inserts == []


def test_embeddings_of_two_concurrent_requests_are_isolated(parts) -> None:
    """Two libraries with the same name and different vectors, encoded at the same time in threads."""
    text_encoder, tokenizer = parts
    before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    libraries = [{"style": _embedding_of(text_encoder, tokenizer, text, "style")} for text in ("cat", "dog dog")]

    def encode(library: dict) -> torch.Tensor:
        return encode_prompt_pair(text_encoder, tokenizer, "a style hat", "style", batch_size=1, use_cfg=True,
                                  device=CPU, embeddings=library).context

    alone = [encode(library) for library in libraries]
    assert not torch.allclose(alone[0], alone[1])
    start = threading.Barrier(2)

    def many(index: int) -> list[torch.Tensor]:
        start.wait()
        return [encode(libraries[index]) for _ in range(15)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(many, [0, 1]))
    for index, outputs in enumerate(results):
        assert all(torch.equal(out, alone[index]) for out in outputs)
    after = text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was written into the model
    assert not text_model_of(text_encoder).embeddings.token_embedding._forward_hooks


def test_embedding_of_the_wrong_width_is_refused_per_request(parts) -> None:
    text_encoder, tokenizer = parts
    wide = TextualInversion("wide", torch.zeros(2, 64), "0" * 12)
    with pytest.raises(InvalidRequest, match=r"^The embedding 'wide' has 64-wide vectors; this checkpoint's text "
                                             r"encoder needs 32-wide ones\.$"):
        encode_prompt_pair(text_encoder, tokenizer, "wide", "", batch_size=1, use_cfg=False, device=CPU,
                           embeddings={"wide": wide})


# ---- embedding files ----------------------------------------------------------------------------------------

def test_library_reads_both_layouts_and_refuses_the_rest(tmp_path: Path) -> None:
    save_file({"emb_params": torch.randn(3, 1024)}, str(tmp_path / "a1111-style.safetensors"))
    save_file({"<my-token>": torch.randn(1024)}, str(tmp_path / "learned_embeds.safetensors"))
    save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "sd15-thing.safetensors"))
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, str(tmp_path / "xl.safetensors"))
    (tmp_path / "old.pt").write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "notes.txt").write_text("ignored")
    library = EmbeddingLibrary.scan(tmp_path)
    assert library.names() == ["a1111-style", "learned_embeds"]
    assert library.embeddings["a1111-style"].count == 3 and library.embeddings["learned_embeds"].count == 1
    data = (tmp_path / "a1111-style.safetensors").read_bytes()
    assert library.embeddings["a1111-style"].shorthash == hashlib.sha256(data).hexdigest()[:12]
    assert set(library.refused) == {"sd15-thing.safetensors", "xl.safetensors", "old.pt", "broken.safetensors"}
    assert "an embedding for SD 1.x" in library.refused["sd15-thing.safetensors"]
    assert "SDXL" in library.refused["xl.safetensors"]
    assert "pickle file, which this app never opens" in library.refused["old.pt"]
    assert "Convert it once to 'old.safetensors'" in library.refused["old.pt"]
    assert "torch.load('NAME.pt', weights_only=True)" in (ROOT / "README.md").read_text()  # the command it points at
    assert "not a readable safetensors file" in library.refused["broken.safetensors"]


def test_an_unreadable_embedding_file_is_refused_without_its_full_path(tmp_path: Path, monkeypatch) -> None:
    """`refused` is what visitors read (GET /sdapi/v1/embeddings): an OSError's text names the server's folder."""
    save_file({"emb_params": torch.randn(3, 1024)}, str(tmp_path / "locked.safetensors"))
    real_read = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path.name == "locked.safetensors":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    library = EmbeddingLibrary.scan(tmp_path)
    assert library.refused == {"locked.safetensors": "locked.safetensors: could not be read (Permission denied)"}


def test_sd1_embedding_message(tmp_path: Path) -> None:
    save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(EmbeddingError) as info:
        load_embedding(tmp_path / "sd15.safetensors")
    assert str(info.value) == ("sd15.safetensors: 768-wide vectors, an embedding for SD 1.x; SD 2.x needs "
                               "1024-wide ones")


def test_missing_folder_is_an_empty_library(tmp_path: Path) -> None:
    assert EmbeddingLibrary.scan(tmp_path / "nope").names() == []
    assert EmbeddingLibrary.scan(None).names() == []


def test_an_embeddings_folder_is_read_again_with_its_width_when_its_files_change(tmp_path: Path) -> None:
    """`WatchedFolder` over an embeddings library read for one width: a file added is used, one of another width
    refused as at start-up, a removed one gone; unchanged, the same library (no read)."""
    from sd2_app.api.watched_folder import WatchedFolder

    save_file({"emb_params": torch.randn(2, 32)}, str(tmp_path / "style.safetensors"))
    watch = WatchedFolder(EmbeddingLibrary.scan(tmp_path, width=32))
    watch.recheck_s = 0
    first = watch.library
    assert first.names() == ["style"] and watch.library is first
    save_file({"emb_params": torch.randn(3, 32)}, str(tmp_path / "new.safetensors"))
    save_file({"emb_params": torch.randn(1, 64)}, str(tmp_path / "wide.safetensors"))
    assert watch.library.names() == ["new", "style"] and watch.library.embeddings["new"].count == 3
    assert "64-wide vectors" in watch.library.refused["wide.safetensors"] and watch.library.width == 32
    (tmp_path / "style.safetensors").unlink()
    assert watch.library.names() == ["new"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_embedding_files_read_without_torch_give_torchs_float32_values(tmp_path: Path, dtype: torch.dtype) -> None:
    """The library reads safetensors with numpy (bfloat16 widened by hand): the same float32 numbers torch's
    `.float()` gives, in (n, width) for a 1-D file too."""
    vectors = (torch.randn(3, 1024, generator=torch.Generator().manual_seed(4)) * 40).to(dtype)
    save_file({"emb_params": vectors}, str(tmp_path / "style.safetensors"))
    save_file({"<token>": vectors[0]}, str(tmp_path / "one.safetensors"))
    loaded = load_embedding(tmp_path / "style.safetensors").vectors
    assert loaded.dtype == np.float32 and loaded.shape == (3, 1024)
    assert np.array_equal(loaded, vectors.float().numpy())
    assert np.array_equal(load_embedding(tmp_path / "one.safetensors").vectors, vectors[:1].float().numpy())


def test_integer_embedding_files_are_refused(tmp_path: Path) -> None:
    save_file({"emb_params": torch.ones(2, 1024, dtype=torch.int32)}, str(tmp_path / "ints.safetensors"))
    with pytest.raises(EmbeddingError, match=r"^ints.safetensors: expected floating-point vectors of shape "
                                              r"\(n, width\), got \(2, 1024\) I32$"):
        load_embedding(tmp_path / "ints.safetensors")
