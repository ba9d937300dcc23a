"""ARM adapters for the multimodal autoregressive image generators in ``transformers``.

* :class:`Emu3ARM` wraps ``Emu3ForConditionalGeneration``. A chunk is the image exactly as it
  sits in Emu3's token stream: a 1-D LongTensor of vocabulary (BPE) ids, ``rows * (cols + 1)``
  long, each row of visual tokens followed by the end-of-line token ``<|extra_200|>``.
* :class:`JanusARM` wraps ``JanusForConditionalGeneration``. A chunk is a 1-D LongTensor of
  VQ codebook indices, ``rows * cols`` long (Janus embeds generated image tokens with its own
  ``generation_embeddings``, not with the text vocabulary).

Story mode: the context for image i is ``[prompt_0, image_0, ..., prompt_{i-1}, image_{i-1},
prompt_i]``, each image in the representation above; a replacement returned by ``on_chunk``
is what enters the context. Both adapters build the token sequence themselves from the
tokenizer (the processors only know single-image prompts): text is tokenized without special
tokens and BOS is put once at the start.

Classifier-free guidance acts on the prompts only: the unconditional sequence is the same story
with every prompt replaced (Emu3: by ``negative_prompt``; Janus: text masked to the pad token,
as Janus's own ``generate`` does), and the earlier images are kept in both branches, so CFG does
not amplify copying of the context images.

Pixels: frames are (1, 3, H, W) in [-1, 1]. Emu3's VQ works in its image processor's
normalized space ``(x01 - mean) / std`` (the processor feeds the VQ for understanding too), so
Emu3ARM converts with the processor's mean/std (0.5/0.5, i.e. [-1, 1] unchanged, when only a
tokenizer is given). Janus's processor normalizes for its SigLIP understanding encoder, not the
VQ; Janus's VQ works in [-1, 1] (DeepSeek's reference decodes with ``(x + 1) / 2``), so JanusARM
uses [-1, 1] as is. Nothing is resized.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ardiff.acdc.base import ARM, ChunkCallback, check_frames

# Emu3's special tokens, as named in the Emu3 tokenizer (BAAI/Emu3-*-hf). The tokenizer's own
# attributes (boi_token, ...) take precedence; these are the fallbacks.
EMU3_EOL_TOKEN = "<|extra_200|>"  # ends each row of visual tokens
EMU3_EOF_TOKEN = "<|extra_201|>"  # ends the image's token grid
EMU3_BOI_TOKEN = "<|image start|>"
EMU3_EOI_TOKEN = "<|image end|>"
EMU3_WRAPPER_TOKEN = "<|image token|>"  # follows the "{rows}*{cols}" size prefix
JANUS_BOI_TOKEN = "<begin_of_image>"
JANUS_EOI_TOKEN = "<end_of_image>"
# Janus-Pro's conversation format for text-to-image (DeepSeek's sft template, no system prompt).
JANUS_PROMPT_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"


# -- shared helpers ---------------------------------------------------------------------------
def _check_local_dir(path: str | Path, who: str, repo_hint: str) -> Path:
    """Weights come from a local directory only (no Hub access at run time)."""
    local = Path(path).expanduser()
    if not local.is_dir():
        raise FileNotFoundError(
            f"{who}.from_pretrained: no model directory at {str(local)!r}. Download the checkpoint "
            f"first, e.g. `huggingface-cli download {repo_hint} --local-dir {local}`, and pass that directory.")
    return local


def _load_processor_or_tokenizer(local: Path) -> Any:
    """AutoProcessor when the directory has a processor config, else just the tokenizer."""
    from transformers import AutoProcessor, AutoTokenizer

    if (local / "processor_config.json").exists() or (local / "preprocessor_config.json").exists():
        return AutoProcessor.from_pretrained(local, local_files_only=True)
    return AutoTokenizer.from_pretrained(local, local_files_only=True)


def _split_processor(processor_or_tokenizer: Any) -> tuple[Any, Any | None]:
    """(tokenizer, image_processor or None) from a processor or a bare tokenizer."""
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", None)
    if tokenizer is None:
        return processor_or_tokenizer, None
    return tokenizer, getattr(processor_or_tokenizer, "image_processor", None)


def _norm_stats(image_processor: Any | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of shape (1, 3, 1, 1) mapping [0, 1] pixels to the VQ model's input space."""
    mean = getattr(image_processor, "image_mean", None) if image_processor is not None else None
    std = getattr(image_processor, "image_std", None) if image_processor is not None else None
    mean = [0.5] * 3 if mean is None else ([float(mean)] * 3 if isinstance(mean, (int, float)) else list(mean))
    std = [0.5] * 3 if std is None else ([float(std)] * 3 if isinstance(std, (int, float)) else list(std))
    if getattr(image_processor, "do_normalize", True) is False:
        mean, std = [0.0] * 3, [1.0] * 3
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def _token_id(tokenizer: Any, attribute: str, fallback: str, who: str) -> int:
    """The id of a special token, named by the tokenizer attribute or the model's default."""
    token = getattr(tokenizer, attribute, None) or fallback
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"{who}: the tokenizer has no {token!r} token ({attribute}); use the tokenizer "
                         f"that ships with the checkpoint")
    return int(token_id)


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    # No special tokens: BOS is added once for the whole story, not once per prompt.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _commit(chunk: torch.Tensor, index: int, on_chunk: ChunkCallback, validate) -> torch.Tensor:
    """Offer chunk ``index`` to ``on_chunk``; a (validated) replacement is what the context keeps."""
    replacement = on_chunk(index, chunk)
    return chunk if replacement is None else validate(replacement)


def _chunk_seed(generator: torch.Generator) -> int:
    """One seed per chunk drawn from the caller's generator: chunks differ, runs repeat."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def _frames_to_model(frames: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor,
                     who: str) -> torch.Tensor:
    """(1, C, H, W) in [-1, 1] -> (1, 3, H, W) in the VQ model's normalized space."""
    frames = check_frames(frames, who)
    if frames.shape[0] != 1:
        raise ValueError(f"{who}: an image chunk is one frame, got {frames.shape[0]} frames {tuple(frames.shape)}")
    if frames.shape[1] == 1:
        frames = frames.repeat(1, 3, 1, 1)  # grayscale -> RGB
    if frames.shape[1] != 3:
        raise ValueError(f"{who}: frames need 1 or 3 channels, got {frames.shape[1]}")
    height, width = int(frames.shape[-2]), int(frames.shape[-1])
    if (height, width) != tuple(size):
        raise ValueError(f"{who}: frames are {height}x{width} (HxW) but the model's images are "
                         f"{size[0]}x{size[1]}; resize or crop them to {size[0]}x{size[1]} first "
                         f"(this adapter never resizes silently)")
    pixels01 = (frames.float().clamp(-1, 1) + 1) / 2
    return (pixels01 - mean) / std


def _model_to_frames(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """VQ decoder output (normalized space) -> frames in [-1, 1], float32 on the CPU."""
    pixels = pixels.detach().float().cpu()
    return ((pixels * std + mean) * 2 - 1).clamp(-1, 1)


def _as_chunk(chunk: Any, length: int, who: str) -> torch.Tensor:
    """A chunk as a 1-D int64 CPU tensor of the expected length."""
    if not isinstance(chunk, torch.Tensor):
        raise TypeError(f"{who}: a chunk is a 1-D LongTensor of token ids, got {type(chunk).__name__}")
    chunk = chunk.detach().reshape(-1).long().cpu()
    if chunk.numel() != length:
        raise ValueError(f"{who}: a chunk has {length} token ids for this image size, got {chunk.numel()}")
    return chunk


def _image_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = (int(s) for s in size)
    return height, width


# -- Emu3 ------------------------------------------------------------------------------------
class Emu3ARM(ARM):
    """Story-mode ARM on ``Emu3ForConditionalGeneration`` (e.g. BAAI/Emu3-Gen-hf).

    ``processor_or_tokenizer``: an ``Emu3Processor`` or just its tokenizer (the adapter builds
    the generation prompt ``{prompt}<|image start|>{rows}*{cols}<|image token|>`` itself).
    ``image_size``: pixels, int or (H, W), multiples of the VQ's spatial factor (8 for the real
    model); default: the processor's ``image_area``/``ratio`` (720x720 -> 90x90 tokens).
    ``guidance_scale``: CFG through ``generate(negative_prompt_ids=...)``; None or 1 disables it.
    ``do_sample=False`` decodes greedily. ``top_k=2048`` follows Emu3's own generation example.
    A story turn is ``{prompt_template}<|image start|>{rows}*{cols}<|image token|>{image}
    <|extra_201|><|image end|>``; turns follow each other with nothing between (put a separator
    in ``prompt_template`` if the checkpoint wants one).
    """

    def __init__(self, model: Any, processor_or_tokenizer: Any, image_size: int | Sequence[int] | None = None,
                 prompt_template: str = "{prompt}", negative_prompt: str = "", guidance_scale: float | None = 3.0,
                 do_sample: bool = True, top_k: int | None = 2048, temperature: float = 1.0):
        self.model = model.eval()
        self.tokenizer, image_processor = _split_processor(processor_or_tokenizer)
        self.mean, self.std = _norm_stats(image_processor)
        self.prompt_template, self.negative_prompt = prompt_template, negative_prompt
        self.guidance_scale, self.do_sample = guidance_scale, do_sample
        self.top_k, self.temperature = top_k, temperature
        self.spatial_factor = int(model.model.vqmodel.vision_spatial_factor)
        self.rows, self.cols = self._token_grid(image_size, processor_or_tokenizer)
        self.image_size = (self.rows * self.spatial_factor, self.cols * self.spatial_factor)
        self.chunk_length = self.rows * (self.cols + 1)  # +1: the end-of-line token of each row

        who = type(self).__name__
        mapping = model.vocabulary_mapping
        self.eol_id = mapping.eol_token_id
        if self.eol_id is None or not mapping.image_tokens:
            raise ValueError(f"{who}: the model config's vocabulary_map has no {EMU3_EOL_TOKEN!r} or visual tokens; "
                             f"load the config and tokenizer from the same Emu3 checkpoint")
        self.visual_ids = torch.tensor(mapping.image_tokens, dtype=torch.long)
        self.bos_id = self.tokenizer.bos_token_id
        self.boi_id = _token_id(self.tokenizer, "boi_token", EMU3_BOI_TOKEN, who)
        self.eoi_id = _token_id(self.tokenizer, "eoi_token", EMU3_EOI_TOKEN, who)
        self.wrapper_id = _token_id(self.tokenizer, "image_wrapper_token", EMU3_WRAPPER_TOKEN, who)
        self.eof_id = _token_id(self.tokenizer, "eof_token", EMU3_EOF_TOKEN, who)

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", **kwargs: Any) -> "Emu3ARM":
        """Model + processor (or tokenizer) from a local directory; never touches the Hub."""
        from transformers import Emu3ForConditionalGeneration

        local = _check_local_dir(local_dir, cls.__name__, "BAAI/Emu3-Gen-hf")
        model = Emu3ForConditionalGeneration.from_pretrained(local, dtype=dtype, local_files_only=True).to(device)
        return cls(model, _load_processor_or_tokenizer(local), **kwargs)

    def _token_grid(self, image_size: int | Sequence[int] | None, processor: Any) -> tuple[int, int]:
        who = type(self).__name__
        if image_size is None:
            if not hasattr(processor, "calculate_generate_size"):
                raise ValueError(f"{who}: pass image_size=(H, W) in pixels (only a tokenizer was given, so the "
                                 f"processor's image_area is not known)")
            return processor.calculate_generate_size(processor.ratio, processor.image_area, self.spatial_factor)
        height, width = _image_size(image_size)
        if height % self.spatial_factor or width % self.spatial_factor or height <= 0 or width <= 0:
            raise ValueError(f"{who}: image_size {height}x{width} must be positive multiples of the VQ's "
                             f"spatial factor {self.spatial_factor}")
        return height // self.spatial_factor, width // self.spatial_factor

    # -- token layout -------------------------------------------------------------------------
    def _image_prefix(self) -> list[int]:
        size_ids = _text_ids(self.tokenizer, f"{self.rows}*{self.cols}")
        return [self.boi_id, *size_ids, self.wrapper_id]

    def _story_ids(self, texts: list[str], images: list[torch.Tensor]) -> list[int]:
        """BOS, then for each text its prompt and the image prefix, closed by the image if known."""
        ids = [] if self.bos_id is None else [self.bos_id]
        for index, text in enumerate(texts):
            ids += _text_ids(self.tokenizer, text) + self._image_prefix()
            if index < len(images):
                ids += images[index].tolist() + [self.eof_id, self.eoi_id]
        return ids

    def _allowed_tokens(self, prompt_length: int):
        """prefix_allowed_tokens_fn: visual tokens, with the end-of-line token closing each row."""
        # Tensors on the model's device: the real vocabulary has 32768 visual tokens, a list would
        # be converted on every step.
        visual = self.visual_ids.to(self.model.device)
        eol = torch.tensor([self.eol_id], device=self.model.device)

        def allowed(batch_id: int, input_ids: torch.Tensor) -> torch.Tensor:
            position = input_ids.shape[-1] - prompt_length  # index of the token about to be generated
            return eol if (position + 1) % (self.cols + 1) == 0 else visual

        return allowed

    # -- ARM ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], on_chunk: ChunkCallback, generator: torch.Generator) -> list[torch.Tensor]:
        texts = [self.prompt_template.format(prompt=p) for p in prompts]
        negatives = [self.prompt_template.format(prompt=self.negative_prompt)] * len(prompts)
        limit = getattr(self.model.config.text_config, "max_position_embeddings", None)
        chunks: list[torch.Tensor] = []
        for index in range(len(prompts)):
            context = self._story_ids(texts[: index + 1], chunks)
            if limit is not None and len(context) + self.chunk_length > limit:
                warnings.warn(f"Emu3ARM: image {index} needs {len(context) + self.chunk_length} positions, beyond the "
                              f"model's max_position_embeddings={limit}; use a smaller image_size or fewer prompts",
                              stacklevel=2)
            negative = self._story_ids(negatives[: index + 1], chunks) if self._use_cfg else None
            chunk = self._sample(context, negative, _chunk_seed(generator))
            chunks.append(_commit(chunk, index, on_chunk, self._valid_chunk))
        return chunks

    @property
    def _use_cfg(self) -> bool:
        return self.guidance_scale is not None and self.guidance_scale != 1

    def _sample(self, context: list[int], negative: list[int] | None, seed: int) -> torch.Tensor:
        device = self.model.device
        input_ids = torch.tensor([context], dtype=torch.long, device=device)
        options: dict[str, Any] = dict(
            max_new_tokens=self.chunk_length, min_new_tokens=self.chunk_length, do_sample=self.do_sample,
            prefix_allowed_tokens_fn=self._allowed_tokens(len(context)),
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eof_id)
        if self.do_sample:
            options.update(top_k=self.top_k, temperature=self.temperature)
        if negative is not None:
            negative_ids = torch.tensor([negative], dtype=torch.long, device=device)
            options.update(guidance_scale=self.guidance_scale, negative_prompt_ids=negative_ids,
                           negative_prompt_attention_mask=torch.ones_like(negative_ids))
        # generate() samples from the global RNG: seed it inside fork_rng so the caller's stream is untouched.
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            output = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
        return output[0, len(context):].long().cpu()

    def _valid_chunk(self, chunk: Any) -> torch.Tensor:
        chunk = _as_chunk(chunk, self.chunk_length, type(self).__name__)
        grid = chunk.view(self.rows, self.cols + 1)
        if not (grid[:, -1] == self.eol_id).all() or not torch.isin(grid[:, :-1], self.visual_ids).all():
            raise ValueError(f"{type(self).__name__}: a chunk must be {self.rows} rows of {self.cols} visual token "
                             f"ids each followed by the end-of-line id {self.eol_id}")
        return chunk

    @torch.no_grad()
    def decode(self, chunk: torch.Tensor) -> torch.Tensor:
        chunk = self._valid_chunk(chunk)
        # decode_image_tokens expects a generated sequence and drops the three tokens that end it
        # (eof, eoi, eos); a chunk stops before them, so put them back.
        eos_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.eoi_id
        tail = torch.tensor([self.eof_id, self.eoi_id, eos_id])
        tokens = torch.cat([chunk, tail])[None].to(self.model.device)
        pixels = self.model.decode_image_tokens(image_tokens=tokens, height=self.rows, width=self.cols)
        return _model_to_frames(pixels, self.mean, self.std)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = _frames_to_model(frames, self.image_size, self.mean, self.std, f"{type(self).__name__}.encode")
        vq = self.model.model.vqmodel
        sizes = torch.tensor([list(self.image_size)], device=self.model.device)
        tokens = self.model.model.get_image_tokens(pixels.to(self.model.device, vq.dtype), sizes)
        return self._valid_chunk(tokens)


# -- Janus -----------------------------------------------------------------------------------
class JanusARM(ARM):
    """Story-mode ARM on ``JanusForConditionalGeneration`` (e.g. deepseek-community/Janus-Pro-1B).

    ``JanusForConditionalGeneration.generate(generation_mode="image")`` accepts text ids only,
    so earlier images cannot enter its context; this adapter runs the same loop itself (the
    language model with a KV cache, the ``generation_head`` for logits, CFG on a doubled batch,
    ``generation_embeddings`` + ``generation_aligner`` for image tokens) over an interleaved
    context. ``processor_or_tokenizer``: a ``JanusProcessor`` or its tokenizer.
    ``guidance_scale``: CFG weight (Janus uses 5); None or 1 disables it. ``do_sample=False``
    decodes greedily. The image size is fixed by the VQ config (384x384 -> 24x24 for Janus-Pro).
    A story turn is ``{prompt_template}<begin_of_image>{image}<end_of_image>``; turns follow each
    other with nothing between (put a separator in ``prompt_template`` if wanted).
    """

    def __init__(self, model: Any, processor_or_tokenizer: Any, prompt_template: str = JANUS_PROMPT_TEMPLATE,
                 guidance_scale: float | None = 5.0, do_sample: bool = True, temperature: float = 1.0):
        self.model = model.eval()
        self.tokenizer, _ = _split_processor(processor_or_tokenizer)
        # The VQ's own [-1, 1] (mean = std = 0.5 on [0, 1] pixels), see the module docstring.
        self.mean, self.std = _norm_stats(None)
        self.prompt_template = prompt_template
        self.guidance_scale, self.do_sample, self.temperature = guidance_scale, do_sample, temperature
        vq = model.model.vqmodel
        self.rows, self.cols = (int(d) for d in vq.quantize.quant_state_dims)
        self.chunk_length = self.rows * self.cols
        self.codebook_size = int(vq.config.num_embeddings)
        upsampling = 2 ** (len(vq.config.channel_multiplier) - 1)
        self.image_size = (self.rows * upsampling, self.cols * upsampling)

        who = type(self).__name__
        self.bos_id = self.tokenizer.bos_token_id
        self.boi_id = _token_id(self.tokenizer, "boi_token", JANUS_BOI_TOKEN, who)
        self.eoi_id = _token_id(self.tokenizer, "eoi_token", JANUS_EOI_TOKEN, who)
        pad_id = getattr(model.generation_config, "pad_token_id", None)
        self.pad_id = pad_id if pad_id is not None else self.tokenizer.pad_token_id
        if self.pad_id is None and self._use_cfg:
            raise ValueError(f"{who}: CFG masks the prompt with the pad token, but neither the generation config "
                             f"nor the tokenizer has a pad_token_id; set one or pass guidance_scale=None")

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu", **kwargs: Any) -> "JanusARM":
        """Model + tokenizer from a local directory; never touches the Hub. (The image processor
        serves the SigLIP understanding path, which image generation does not use.)"""
        from transformers import AutoTokenizer, JanusForConditionalGeneration

        local = _check_local_dir(local_dir, cls.__name__, "deepseek-community/Janus-Pro-1B")
        model = JanusForConditionalGeneration.from_pretrained(local, dtype=dtype, local_files_only=True).to(device)
        return cls(model, AutoTokenizer.from_pretrained(local, local_files_only=True), **kwargs)

    @property
    def _use_cfg(self) -> bool:
        return self.guidance_scale is not None and self.guidance_scale != 1

    # -- token layout -------------------------------------------------------------------------
    def _story(self, prompts: list[str], images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, is_image): text ids are vocabulary ids, image ids are VQ codebook indices."""
        ids: list[int] = [] if self.bos_id is None else [self.bos_id]
        is_image: list[bool] = [False] * len(ids)
        for index, prompt in enumerate(prompts):
            text = _text_ids(self.tokenizer, self.prompt_template.format(prompt=prompt)) + [self.boi_id]
            ids += text
            is_image += [False] * len(text)
            if index < len(images):
                ids += images[index].tolist() + [self.eoi_id]
                is_image += [True] * self.chunk_length + [False]
        return torch.tensor(ids, dtype=torch.long), torch.tensor(is_image, dtype=torch.bool)

    def _embed(self, ids: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        """Text through the LM's embeddings, image tokens through Janus's generation embeddings."""
        text = self.model.get_input_embeddings()(torch.where(is_image, 0, ids))
        if not is_image.any():
            return text
        image = self.model.prepare_embeddings_for_image_generation(ids[is_image])
        out = text.clone()
        out[is_image] = image.to(out.dtype)
        return out

    # -- ARM ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], on_chunk: ChunkCallback, generator: torch.Generator) -> list[torch.Tensor]:
        chunks: list[torch.Tensor] = []
        for index in range(len(prompts)):
            ids, is_image = self._story(list(prompts[: index + 1]), chunks)
            chunk = self.sample_image_tokens(ids, is_image, _chunk_seed(generator))
            chunks.append(_commit(chunk, index, on_chunk, self._valid_chunk))
        return chunks

    @torch.no_grad()
    def sample_image_tokens(self, ids: torch.Tensor, is_image: torch.Tensor, seed: int) -> torch.Tensor:
        """One image (``chunk_length`` VQ indices) after the context ``ids`` (1-D; ``is_image``
        marks the VQ indices among them)."""
        device = self.model.device
        ids, is_image = ids.to(device), is_image.to(device)
        rows = [(ids, is_image)]
        if self._use_cfg:
            # Unconditional branch as in Janus's generate: text masked to pad except BOS and the
            # image delimiters; the earlier images stay (guidance acts on the prompts only).
            keep = is_image | (ids == self.boi_id) | (ids == self.eoi_id)
            if self.bos_id is not None:
                keep |= ids == self.bos_id
            rows.append((torch.where(keep, ids, torch.full_like(ids, self.pad_id)), is_image))
        embeds = torch.stack([self._embed(r_ids, r_mask) for r_ids, r_mask in rows])

        from transformers import DynamicCache

        language_model = self.model.model.language_model
        cache = DynamicCache(config=language_model.config)
        sampler = torch.Generator(device=device).manual_seed(seed)
        tokens = torch.empty(self.chunk_length, dtype=torch.long, device=device)
        for step in range(self.chunk_length):
            hidden = language_model(inputs_embeds=embeds, past_key_values=cache, use_cache=True).last_hidden_state
            logits = self.model.model.generation_head(hidden[:, -1, :]).float()
            if self._use_cfg:
                logits = logits[1] + self.guidance_scale * (logits[0] - logits[1])
            else:
                logits = logits[0]
            if self.do_sample:
                probs = torch.softmax(logits / self.temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=sampler)[0]
            else:
                token = logits.argmax()
            tokens[step] = token
            embeds = self.model.prepare_embeddings_for_image_generation(token.repeat(len(rows), 1))
        return tokens.cpu()

    def _valid_chunk(self, chunk: Any) -> torch.Tensor:
        chunk = _as_chunk(chunk, self.chunk_length, type(self).__name__)
        if chunk.min() < 0 or chunk.max() >= self.codebook_size:
            raise ValueError(f"{type(self).__name__}: chunk ids must be VQ codebook indices in "
                             f"[0, {self.codebook_size}), got [{int(chunk.min())}, {int(chunk.max())}]")
        return chunk

    @torch.no_grad()
    def decode(self, chunk: torch.Tensor) -> torch.Tensor:
        tokens = self._valid_chunk(chunk)[None].to(self.model.device)
        pixels = self.model.decode_image_tokens(tokens)  # (1, H, W, C)
        return _model_to_frames(pixels.permute(0, 3, 1, 2), self.mean, self.std)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = _frames_to_model(frames, self.image_size, self.mean, self.std, f"{type(self).__name__}.encode")
        vq = self.model.model.vqmodel
        output = vq.encode(pixels.to(self.model.device, vq.dtype), return_dict=True)
        return self._valid_chunk(output.image_tokens)
