"""SDEdit correctors on diffusers components: Stable Diffusion (images) and AnimateDiff (video).

Both run the SDEdit loop written here rather than diffusers' img2img pipelines, because
those take a ``strength`` and truncate the schedule to ``int(steps * strength)`` steps of the
full schedule, so the noise level actually used differs from the one asked for (strength 0.55
with 10 steps starts at timestep 401, i.e. t' = 0.402). ACDC's t' is a controlled variable, so
here the t' asked for is the t' used.

The exact-t' schedule (start timestep, steps, the ``t' * S < 1`` guard) is
:func:`ardiff.acdc.sdedit.sdedit_schedule`; the DDIM update on it is :func:`ardiff.diffusion.schedule.ddim_step`.

Masks (user constraints by inpainting), ``(F or 1, 1, H, W)`` in {0, 1}, 1 = may change:
blended latent diffusion — after every step the latents outside the mask (max-pooled to the
latent grid, so a latent cell is free if any of its pixels is) are replaced by the original
latents noised to the new timestep with the same noise; at the end the original pixels are
pasted back outside the mask, so there the output equals the input bit for bit. This works
with any SD UNet. A dedicated inpainting UNet (9 input channels: latents, mask, masked-image
latents) is used as well when given: it also gets diffusers' inpainting conditioning (with the
max-pooled mask and the posterior mean of the masked image, where diffusers uses a nearest-
resized mask and a posterior sample), and the same blending and paste-back.

Models: Stable Diffusion 1.x/2.x family (one CLIP text encoder; epsilon or v prediction);
SDXL-style UNets with added conditioning are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ardiff.acdc.base import Correction, Corrector, check_frames
from ardiff.acdc.sdedit import SDEditSchedule, sdedit_schedule
from ardiff.diffusion.schedule import ddim_step

SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


def check_model_dir(path: str | Path, who: str, subfolders: Sequence[str] = SUBFOLDERS) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{who}: model directory {str(path)!r} does not exist; give a local directory in the "
                                f"diffusers layout ({', '.join(subfolders)}/) — nothing is downloaded")
    missing = [s for s in subfolders if not (path / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"{who}: {str(path)!r} lacks the subfolder(s) {missing}; expected the diffusers "
                                f"layout {', '.join(s + '/' for s in subfolders)} (e.g. a pipeline's save_pretrained)")
    return path


def load_common(path: Path, device: str | torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """vae, text_encoder, tokenizer and a DDIM scheduler from a local diffusers directory."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "vae": AutoencoderKL.from_pretrained(path / "vae", local_files_only=True).to(device, dtype),
        "text_encoder": CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True).to(device, dtype),
        "tokenizer": CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True),
        "scheduler": DDIMScheduler.from_pretrained(path / "scheduler", local_files_only=True),
    }


class SDEditCorrector(Corrector):
    """SDEdit with a Stable-Diffusion-family model (AutoencoderKL + CLIP text encoder + UNet).

    Frames are corrected independently, ``frames_per_pass`` at a time (None: all at once);
    the noise for all frames is drawn up front, so results do not depend on that batching.
    """

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any,
                 guidance_scale: float = 7.5, num_inference_steps: int = 50, negative_prompt: str | None = None,
                 frames_per_pass: int | None = None):
        from diffusers import DDIMScheduler

        if frames_per_pass is not None and frames_per_pass < 1:
            raise ValueError(f"frames_per_pass={frames_per_pass} must be >= 1 (or None for all frames at once)")
        self.vae, self.text_encoder, self.tokenizer, self.unet = vae, text_encoder, tokenizer, unet
        # DDIM whatever the model shipped with: deterministic (eta = 0) and it uses the model's betas.
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.guidance_scale = float(guidance_scale)
        self.num_inference_steps = int(num_inference_steps)
        self.negative_prompt = negative_prompt
        self.frames_per_pass = frames_per_pass
        self.latent_channels = int(vae.config.latent_channels)
        self.inpainting_unet = int(unet.config.in_channels) == 2 * self.latent_channels + 1
        if not self.inpainting_unet and int(unet.config.in_channels) != self.latent_channels:
            raise ValueError(f"unet has {unet.config.in_channels} input channels; expected the VAE's "
                             f"{self.latent_channels} latent channels or {2 * self.latent_channels + 1} (inpainting)")
        if getattr(unet.config, "addition_embed_type", None) is not None:
            raise ValueError(f"unet has addition_embed_type={unet.config.addition_embed_type!r} (SDXL-style added "
                             "conditioning), which this corrector does not supply; use an SD 1.x/2.x-family model")
        # Validates now rather than at the first correct() call.
        sdedit_schedule(1.0, self.num_train_timesteps, self.num_inference_steps)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        **kwargs: Any) -> "SDEditCorrector":
        """Load from a local diffusers directory (vae/, text_encoder/, tokenizer/, unet/, scheduler/);
        ``kwargs`` go to the constructor (guidance_scale, num_inference_steps, ...)."""
        from diffusers import UNet2DConditionModel

        path = check_model_dir(path, cls.__name__)
        parts = load_common(path, device, dtype)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True).to(device, dtype)
        return cls(unet=unet, **parts, **kwargs)

    # -- properties ---------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def schedule(self, t_prime: float) -> SDEditSchedule:
        return sdedit_schedule(t_prime, self.num_train_timesteps, self.num_inference_steps)

    # -- the corrector --------------------------------------------------------------------
    @torch.no_grad()
    def correct(self, frames: torch.Tensor, prompt: str, t_prime: float, generator: torch.Generator,
                mask: torch.Tensor | None = None) -> Correction:
        from diffusers.utils.torch_utils import randn_tensor

        who = type(self).__name__
        frames = check_frames(frames, who)
        schedule = self.schedule(t_prime)
        rgb = self._to_rgb(frames, who)
        mask = self._check_mask(mask, frames, who)

        latents0 = self._encode(rgb)  # (F, c, h, w), float32
        # All the noise first, in frame order: the result does not depend on frames_per_pass.
        noise = randn_tensor(latents0.shape, generator=generator, device=latents0.device, dtype=latents0.dtype)
        latent_mask = None if mask is None else self._latent_mask(mask, latents0)
        inpaint_cond = self._inpaint_condition(rgb, mask, latents0) if self.inpainting_unet else None
        text = self._text_embeddings(prompt)

        out = torch.empty_like(latents0)
        for part in self._passes(latents0.shape[0]):
            out[part] = self._denoise(latents0[part], noise[part], schedule.timesteps, text,
                                      None if latent_mask is None else latent_mask[part],
                                      None if inpaint_cond is None else inpaint_cond[part])
        result = self._decode(out).to(frames.device, frames.dtype)
        if frames.shape[1] == 1:
            result = result.mean(dim=1, keepdim=True)  # the input was grey repeated: undo the repeat
        if mask is not None:
            result = torch.where(mask.to(frames.device).bool().expand_as(frames), result, frames)
        return Correction(frames=result, t_prime=schedule.t_prime, timesteps=list(schedule.timesteps),
                          extra={"t_prime_requested": float(t_prime), "t_start": schedule.t_start,
                                 "num_steps": len(schedule.timesteps), "num_inference_steps": self.num_inference_steps,
                                 "num_train_timesteps": self.num_train_timesteps,
                                 "guidance_scale": self.guidance_scale, "masked": mask is not None,
                                 "inpainting_unet": self.inpainting_unet})

    # -- the SDEdit loop ------------------------------------------------------------------
    def _denoise(self, latents0: torch.Tensor, noise: torch.Tensor, timesteps: list[int],
                 text: torch.Tensor, latent_mask: torch.Tensor | None,
                 inpaint_cond: torch.Tensor | None) -> torch.Tensor:
        """Latents (f, c, h, w) noised to timesteps[0] and denoised to clean."""
        add_noise = self.scheduler.add_noise

        def at(t: int) -> torch.Tensor:
            return torch.full((latents0.shape[0],), t, dtype=torch.long, device=latents0.device)

        latents = add_noise(latents0, noise, at(timesteps[0]))
        for k, t in enumerate(timesteps):
            prev = timesteps[k + 1] if k + 1 < len(timesteps) else None
            model_in = latents if inpaint_cond is None else torch.cat([latents, inpaint_cond], dim=1)
            output = self._guided_output(model_in, t, text)
            latents = ddim_step(self.scheduler, output, t, prev, latents)
            if latent_mask is not None:
                # Blended latent diffusion: the kept region follows the original's noisy trajectory.
                known = latents0 if prev is None else add_noise(latents0, noise, at(prev))
                latents = torch.where(latent_mask, latents, known)
        return latents

    def _guided_output(self, model_in: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance around :meth:`_unet`; ``text`` is (G, seq, d), uncond first."""
        groups = text.shape[0]
        x = model_in.to(self.unet.dtype).unsqueeze(0).expand(groups, *model_in.shape)
        x = self.scheduler.scale_model_input(x, t)
        out = self._unet(x, t, text).float()
        if groups == 1:
            return out[0]
        uncond, cond = out[0], out[1]
        return uncond + self.guidance_scale * (cond - uncond)

    def _unet(self, x: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        """x (G, f, C, h, w), text (G, seq, d) -> model output (G, f, c, h, w); frames independent."""
        g, f = x.shape[:2]
        out = self.unet(x.reshape(g * f, *x.shape[2:]), t,
                        encoder_hidden_states=text.repeat_interleave(f, dim=0)).sample
        return out.reshape(g, f, *out.shape[1:])

    def _passes(self, num_frames: int) -> list[slice]:
        size = self.frames_per_pass or num_frames
        return [slice(i, min(i + size, num_frames)) for i in range(0, num_frames, size)]

    # -- pieces ---------------------------------------------------------------------------
    def _text_embeddings(self, prompt: str) -> torch.Tensor:
        """(1, seq, d) without guidance, else (2, seq, d) = [negative, prompt]."""
        prompts = [str(prompt)]
        if self.guidance_scale > 1:
            prompts.insert(0, self.negative_prompt or "")
        # A tokenizer saved without model_max_length reports a huge one: the encoder's length bounds it.
        length = min(int(self.tokenizer.model_max_length), int(self.text_encoder.config.max_position_embeddings))
        ids = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0].to(self.unet.dtype)

    def _to_rgb(self, frames: torch.Tensor, who: str) -> torch.Tensor:
        channels, (height, width) = frames.shape[1], frames.shape[2:]
        if channels not in (1, 3):
            raise ValueError(f"{who}: frames have {channels} channels; expected 1 (grey, repeated to RGB) or 3")
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(f"{who}: frame size {height}x{width} is not divisible by the VAE factor {factor}; "
                             f"resize or crop the frames to multiples of {factor}")
        return frames.expand(-1, 3, -1, -1) if channels == 1 else frames

    @staticmethod
    def _check_mask(mask: torch.Tensor | None, frames: torch.Tensor, who: str) -> torch.Tensor | None:
        if mask is None:
            return None
        f, _, h, w = frames.shape
        if mask.dim() != 4 or mask.shape[0] not in (1, f) or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (h, w):
            raise ValueError(f"{who}: mask shape {tuple(mask.shape)} must be ({f} or 1, 1, {h}, {w}) for frames "
                             f"{tuple(frames.shape)}")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"{who}: mask values must be 0 (keep) or 1 (may change); threshold it first")
        return mask.bool().expand(f, 1, h, w)

    def _latent_mask(self, mask: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # Max-pool: a latent cell is free if any of its pixels may change (the paste-back fixes the rest).
        small = F.max_pool2d(mask.float(), self.vae_scale_factor)
        return small.to(latents.device).bool().expand_as(latents)

    def _inpaint_condition(self, rgb: torch.Tensor, mask: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
        """The extra channels of a 9-channel inpainting UNet: [mask, masked-image latents]."""
        if mask is None:  # no constraint: everything may change, nothing is shown
            mask = torch.ones(rgb.shape[0], 1, *rgb.shape[2:], dtype=torch.bool, device=rgb.device)
        masked = rgb * (~mask.to(rgb.device)).to(rgb.dtype)
        small = F.max_pool2d(mask.float(), self.vae_scale_factor).to(latents.device)
        return torch.cat([small, self._encode(masked)], dim=1)

    def _encode(self, rgb: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        # The posterior mean, not a sample: SDEdit should start from the frame itself.
        z = vae.encode(rgb.to(vae.device, vae.dtype)).latent_dist.mode().float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (z - shift) * vae.config.scaling_factor

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = latents / vae.config.scaling_factor + shift
        return vae.decode(z.to(vae.dtype)).sample.float().clamp(-1, 1)


class AnimateDiffCorrector(SDEditCorrector):
    """SDEdit on video with AnimateDiff (a ``UNetMotionModel``): the same exact-t' loop, the
    frames denoised together in chunks of ``chunk_frames`` (16, AnimateDiff's training length).

    Chunks are corrected independently (no overlap), so a clip longer than one chunk may show a
    seam at chunk boundaries; ACDC's video chunks are 16 frames, one chunk.
    """

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any,
                 guidance_scale: float = 7.5, num_inference_steps: int = 50, negative_prompt: str | None = None,
                 chunk_frames: int = 16):
        from diffusers import UNetMotionModel

        if not isinstance(unet, UNetMotionModel):
            raise TypeError(f"AnimateDiffCorrector needs a UNetMotionModel, got {type(unet).__name__}; build one with "
                            "UNetMotionModel.from_unet2d(unet, MotionAdapter.from_pretrained(dir)) or use "
                            "AnimateDiffCorrector.from_pretrained(sd_dir, motion_adapter=adapter_dir)")
        max_frames = int(unet.config.motion_max_seq_length)
        if not 1 <= chunk_frames <= max_frames:
            raise ValueError(f"chunk_frames={chunk_frames} must be in 1..{max_frames} (the motion modules' "
                             "motion_max_seq_length)")
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, guidance_scale=guidance_scale,
                         num_inference_steps=num_inference_steps, negative_prompt=negative_prompt,
                         frames_per_pass=chunk_frames)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        motion_adapter: str | Path | None = None, **kwargs: Any) -> "AnimateDiffCorrector":
        """Either an AnimateDiff pipeline directory (unet/ holds a UNetMotionModel), or a Stable
        Diffusion directory plus ``motion_adapter``, a local MotionAdapter directory."""
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

        path = check_model_dir(path, cls.__name__)
        parts = load_common(path, device, dtype)
        if motion_adapter is not None:
            adapter_dir = Path(motion_adapter).expanduser()
            if not (adapter_dir / "config.json").is_file():
                raise FileNotFoundError(f"{cls.__name__}: motion adapter directory {str(adapter_dir)!r} has no "
                                        "config.json; give a local MotionAdapter directory (save_pretrained layout)")
            unet2d = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True)
            adapter = MotionAdapter.from_pretrained(adapter_dir, local_files_only=True)
            unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        else:
            class_name = UNetMotionModel.load_config(path / "unet").get("_class_name")
            if class_name != "UNetMotionModel":
                raise ValueError(f"{cls.__name__}: {str(path / 'unet')!r} holds a {class_name}, not a "
                                 "UNetMotionModel; pass motion_adapter=<local MotionAdapter directory>")
            unet = UNetMotionModel.from_pretrained(path / "unet", local_files_only=True)
        return cls(unet=unet.to(device, dtype), **parts, **kwargs)

    def _unet(self, x: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        """x (G, f, C, h, w) -> the motion UNet's (G, C, f, h, w); its text is per frame."""
        f = x.shape[1]
        out = self.unet(x.permute(0, 2, 1, 3, 4), t, encoder_hidden_states=text.repeat_interleave(f, dim=0)).sample
        return out.permute(0, 2, 1, 3, 4)
