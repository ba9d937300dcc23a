"""Emu3ARM and JanusARM on tiny random models built from configs (no Hub access).

The tokenizers are character-level WordLevel tokenizers with the special tokens each adapter
needs (Emu3: BOS/EOS/pad, <|image start|>, <|image end|>, <|image token|>, <|extra_200|> (EOL),
<|extra_201|> (EOF), <|visual token NNNNNN|>; Janus: BOS/pad, <begin_of_image>, <end_of_image>).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from ardiff.acdc.base import Correction, Corrector  # noqa: E402
from ardiff.acdc.pipeline import ACDCPipeline  # noqa: E402
from ardiff.acdc.transformers_arms import Emu3ARM, JanusARM  # noqa: E402

CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,*:\n|<>")
PROMPTS = ["a red cat", "the cat sleeps", "the cat wakes up"]
EMU3_CODEBOOK = 16
EMU3_SIZE = 8  # pixels; VQ spatial factor 2 -> 4x4 tokens (+1 EOL per row)
JANUS_CODEBOOK = 16
JANUS_SIZE = 16  # pixels; 4x4 VQ tokens


def char_tokenizer(specials: list[str], extra_tokens: list[str], **special_kwargs):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<unk>", *CHARS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special_kwargs)
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.add_tokens(extra_tokens, special_tokens=True)
    return tokenizer


@pytest.fixture(scope="module")
def emu3_parts():
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    tokenizer = char_tokenizer(
        ["<|extra_200|>"], [f"<|visual token {i:06d}|>" for i in range(EMU3_CODEBOOK)],
        bos_token="<|extra_203|>", eos_token="<|extra_204|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
                              "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"})
    config = Emu3Config(
        vq_config=dict(codebook_size=EMU3_CODEBOOK, embed_dim=4, latent_channels=4, base_channels=32,
                       channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[], temporal_downsample_factor=2,
                       hidden_size=32, num_attention_heads=1),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        vocabulary_map=tokenizer.get_vocab())
    torch.manual_seed(0)
    return Emu3ForConditionalGeneration(config).eval(), tokenizer


@pytest.fixture(scope="module")
def janus_parts():
    from transformers import JanusConfig, JanusForConditionalGeneration

    tokenizer = char_tokenizer(
        [], [], bos_token="<|begin_of_sentence|>", eos_token="<|end_of_sentence|>", pad_token="<|pad|>",
        extra_special_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                              "eoi_token": "<end_of_image>"})
    hidden = 32
    config = JanusConfig(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, image_size=JANUS_SIZE,
                           patch_size=4, projection_dim=hidden, depth=1, num_image_tokens=16),
        vq_config=dict(embed_dim=4, num_embeddings=JANUS_CODEBOOK, latent_channels=4, base_channels=32,
                       channel_multiplier=[1, 1, 1], num_res_blocks=1, projection_dim=hidden,
                       image_token_embed_dim=hidden, num_hidden_layers=1),
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))
    torch.manual_seed(0)
    return JanusForConditionalGeneration(config).eval(), tokenizer


@pytest.fixture
def emu3(emu3_parts):
    model, tokenizer = emu3_parts
    return Emu3ARM(model, tokenizer, image_size=EMU3_SIZE, guidance_scale=2.0)


@pytest.fixture
def janus(janus_parts):
    model, tokenizer = janus_parts
    return JanusARM(model, tokenizer, guidance_scale=5.0)


class FlipCorrector(Corrector):
    """Mirrors the image: a 'correction' whose re-encoded tokens differ from the ARM's."""

    def correct(self, frames, prompt, t_prime, generator, mask=None):
        return Correction(frames=torch.flip(frames, dims=[-1]), t_prime=t_prime, timesteps=[])


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def random_frames(size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- (a) codec round trips ------------------------------------------------------------------
def test_emu3_encode_decode_round_trip(emu3):
    assert emu3.image_size == (EMU3_SIZE, EMU3_SIZE) and emu3.chunk_length == 4 * 5
    chunk = emu3.encode(random_frames(EMU3_SIZE))
    assert chunk.dtype == torch.long and chunk.shape == (emu3.chunk_length,)
    grid = chunk.view(4, 5)
    assert (grid[:, -1] == emu3.eol_id).all()  # each row ends with <|extra_200|>
    assert torch.isin(grid[:, :-1], emu3.visual_ids).all()
    frames = emu3.decode(chunk)
    assert frames.shape == (1, 3, EMU3_SIZE, EMU3_SIZE) and frames.dtype == torch.float32
    assert frames.min() >= -1 and frames.max() <= 1
    again = emu3.encode(frames)  # tokens -> pixels -> tokens stays in the visual vocabulary
    assert again.shape == chunk.shape and torch.isin(again.view(4, 5)[:, :-1], emu3.visual_ids).all()
    gray = emu3.encode(random_frames(EMU3_SIZE, channels=1))  # 1 channel is repeated to RGB
    assert gray.shape == chunk.shape


def test_janus_encode_decode_round_trip(janus):
    assert janus.image_size == (JANUS_SIZE, JANUS_SIZE) and janus.chunk_length == 16
    chunk = janus.encode(random_frames(JANUS_SIZE))
    assert chunk.dtype == torch.long and chunk.shape == (16,)
    assert chunk.min() >= 0 and chunk.max() < JANUS_CODEBOOK
    frames = janus.decode(chunk)
    assert frames.shape == (1, 3, JANUS_SIZE, JANUS_SIZE) and frames.min() >= -1 and frames.max() <= 1
    again = janus.encode(frames)
    assert again.shape == (16,) and again.min() >= 0 and again.max() < JANUS_CODEBOOK
    assert janus.encode(random_frames(JANUS_SIZE, channels=1)).shape == (16,)


# -- (b) story through ACDCPipeline: the replaced chunk is what later chunks see -------------------
def test_emu3_story_context_holds_replaced_chunks(emu3, monkeypatch):
    contexts: list[list[int]] = []
    real_generate = emu3.model.generate

    def spy_generate(*args, **kwargs):
        contexts.append(kwargs["input_ids"][0].tolist())
        negative = kwargs.get("negative_prompt_ids")
        assert negative is not None  # guidance_scale=2 -> CFG with a story-shaped negative
        return real_generate(*args, **kwargs)

    replacements: list[torch.Tensor] = []
    real_encode = emu3.encode

    def spy_encode(frames):
        replacements.append(real_encode(frames))
        return replacements[-1]

    monkeypatch.setattr(emu3.model, "generate", spy_generate)
    monkeypatch.setattr(emu3, "encode", spy_encode)
    result = ACDCPipeline(emu3, FlipCorrector(), progress=False).story(PROMPTS, seed=3)

    assert result.corrected.shape == (3, 1, 3, EMU3_SIZE, EMU3_SIZE)
    assert len(contexts) == 3 and len(replacements) == 3
    prefix = [emu3.boi_id, *emu3.tokenizer("4*4", add_special_tokens=False)["input_ids"], emu3.wrapper_id]
    for context in contexts:
        assert context[0] == emu3.bos_id and context[-len(prefix):] == prefix
    # The second image is generated after the replaced first image (closed by eof, eoi), the
    # third after both replacements.
    first = replacements[0].tolist() + [emu3.eof_id, emu3.eoi_id]
    assert contains(contexts[1], first) and contains(contexts[2], first)
    assert contains(contexts[2], replacements[1].tolist() + [emu3.eof_id, emu3.eoi_id])
    # The correction changed chunk 0, and what the pipeline reports as corrected is the replacement.
    assert not torch.equal(result.uncorrected[0], result.corrected[0])
    assert torch.allclose(result.corrected[0, 0], emu3.decode(replacements[0])[0])


def test_janus_story_context_holds_replaced_chunks(janus, monkeypatch):
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_sample = janus.sample_image_tokens

    def spy_sample(ids, is_image, seed):
        calls.append((ids.clone(), is_image.clone()))
        return real_sample(ids, is_image, seed)

    prefill_embeds: list[torch.Tensor] = []

    def record_prefill(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        if embeds.shape[1] > 1:  # the prefill, not a one-token step
            prefill_embeds.append(embeds.detach().clone())

    replacements: list[torch.Tensor] = []
    real_encode = janus.encode

    def spy_encode(frames):
        replacements.append(real_encode(frames))
        return replacements[-1]

    monkeypatch.setattr(janus, "sample_image_tokens", spy_sample)
    monkeypatch.setattr(janus, "encode", spy_encode)
    hook = janus.model.model.language_model.register_forward_pre_hook(record_prefill, with_kwargs=True)
    try:
        result = ACDCPipeline(janus, FlipCorrector(), progress=False).story(PROMPTS, seed=3)
    finally:
        hook.remove()

    assert result.corrected.shape == (3, 1, 3, JANUS_SIZE, JANUS_SIZE)
    assert len(calls) == 3 and len(replacements) == 3 and len(prefill_embeds) == 3
    assert not calls[0][1].any()
    assert torch.equal(calls[1][0][calls[1][1]], replacements[0])
    assert torch.equal(calls[2][0][calls[2][1]], torch.cat(replacements[:2]))
    for ids, _ in calls:
        assert ids[0] == janus.bos_id and ids[-1] == janus.boi_id
    # What the language model actually saw: the replaced tokens through the generation embeddings,
    # in both the conditional and the unconditional (CFG) rows.
    ids, is_image = calls[1]
    expected = janus.model.prepare_embeddings_for_image_generation(replacements[0])
    assert prefill_embeds[1].shape[0] == 2
    for row in prefill_embeds[1]:
        assert torch.allclose(row[is_image], expected, atol=1e-6)


# -- (c) determinism --------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["emu3", "janus"])
def test_same_seed_same_chunks(which, request):
    arm = request.getfixturevalue(which)

    def run(seed: int) -> list[torch.Tensor]:
        return arm.generate(PROMPTS[:2], lambda i, chunk: None, torch.Generator().manual_seed(seed))

    first, second, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    run(7)
    assert torch.equal(torch.rand(3), before)  # sampling leaves the global RNG alone


def test_greedy_ignores_seed(emu3_parts, janus_parts):
    arms = [Emu3ARM(*emu3_parts, image_size=EMU3_SIZE, guidance_scale=None, do_sample=False),
            JanusARM(*janus_parts, guidance_scale=None, do_sample=False)]
    for arm in arms:
        a = arm.generate(PROMPTS[:1], lambda i, c: None, torch.Generator().manual_seed(0))
        b = arm.generate(PROMPTS[:1], lambda i, c: None, torch.Generator().manual_seed(1))
        assert torch.equal(a[0], b[0])


# -- the prompt layout matches the transformers processors ---------------------------------------
def test_generation_prompts_match_the_processors(emu3_parts, janus_parts):
    pytest.importorskip("PIL")
    from transformers import Emu3ImageProcessor, Emu3Processor, JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    model, tokenizer = emu3_parts
    processor = Emu3Processor(Emu3ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3), tokenizer)
    processor.downsample_ratio = 2  # the tiny VQ's spatial factor (8 for the real model)
    processor.image_area = EMU3_SIZE * EMU3_SIZE
    arm = Emu3ARM(model, processor)
    assert arm.image_size == (EMU3_SIZE, EMU3_SIZE)  # from the processor's image_area
    expected = processor(text=PROMPTS[0], return_for_image_generation=True)["input_ids"][0]
    assert arm._story_ids([PROMPTS[0]], []) == list(expected)

    model, tokenizer = janus_parts
    arm = JanusARM(model, JanusProcessor(JanusImageProcessorPil(), tokenizer))
    text = arm.prompt_template.format(prompt=PROMPTS[0])
    expected = JanusProcessor(JanusImageProcessorPil(), tokenizer)(text=text, generation_mode="image")["input_ids"][0]
    ids, is_image = arm._story([PROMPTS[0]], [])
    # The char-level test tokenizer adds no BOS (Janus's Llama tokenizer does); the adapter adds it.
    assert ids[0] == arm.bos_id and ids[1:].tolist() == expected.tolist() and not is_image.any()


# -- (d) errors and loading ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Emu3ARM, JanusARM])
def test_missing_local_dir_is_a_clear_error(cls, tmp_path):
    missing = tmp_path / "not-downloaded"
    with pytest.raises(FileNotFoundError, match="not-downloaded.*huggingface-cli download"):
        cls.from_pretrained(missing)


def test_wrong_frame_size_names_both_sizes(emu3, janus):
    with pytest.raises(ValueError, match=r"10x8 .*8x8"):
        emu3.encode(torch.zeros(1, 3, 10, 8))
    with pytest.raises(ValueError, match=r"8x8 .*16x16"):
        janus.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="one frame"):
        janus.encode(torch.zeros(2, 3, JANUS_SIZE, JANUS_SIZE))


def test_bad_chunks_are_rejected(emu3, janus):
    with pytest.raises(ValueError, match="token ids"):
        emu3.decode(torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="end-of-line"):
        emu3.decode(torch.zeros(emu3.chunk_length, dtype=torch.long))
    with pytest.raises(ValueError, match="codebook"):
        janus.decode(torch.full((16,), JANUS_CODEBOOK))
    with pytest.raises(ValueError, match="multiples"):
        Emu3ARM(emu3.model, emu3.tokenizer, image_size=7)


@pytest.mark.parametrize("cls, parts, kwargs, size", [(Emu3ARM, "emu3_parts", {"image_size": EMU3_SIZE}, EMU3_SIZE),
                                                      (JanusARM, "janus_parts", {}, JANUS_SIZE)])
def test_from_pretrained_local_dir(cls, parts, kwargs, size, tmp_path, request):
    model, tokenizer = request.getfixturevalue(parts)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)  # no processor config: the adapter falls back to the tokenizer
    loaded = cls.from_pretrained(tmp_path, **kwargs)
    frames = random_frames(size)
    assert torch.equal(loaded.encode(frames), cls(model, tokenizer, **kwargs).encode(frames))
    assert loaded.boi_id == cls(model, tokenizer, **kwargs).boi_id


def test_emu3_warns_past_the_position_limit(emu3, monkeypatch):
    # The real model at 720x720 has 8190 tokens per image against 9216 positions: stories need
    # smaller images. Lower the limit here (RoPE is computed already, so nothing else changes).
    monkeypatch.setattr(emu3.model.config.text_config, "max_position_embeddings", 40)
    with pytest.warns(UserWarning, match="max_position_embeddings=40"):
        emu3.generate(PROMPTS[:2], lambda i, c: None, torch.Generator().manual_seed(0))
