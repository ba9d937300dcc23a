"""Feature networks for the distribution metrics: injectable, offline, from local weight files.

A feature network maps samples in [-1, 1] to ``(features (N, D), logits (N, K) or None)``:

- :class:`FMNISTFeatures`: the shipped Fashion-MNIST classifier (128-d) -> "FID-FMNIST".
  Offline and always available; comparable only to other FID-FMNIST numbers.
- :class:`InceptionFeatures`: Inception-V3 pool features (2048-d) and logits through
  torch-fidelity's ``inception-v3-compat`` network (the TF-FID port used by the literature),
  from a local weight file (``pt_inception-2015-12-05-6726825d.pth``). Numbers comparable to
  published FID / IS / KID at the same sample count and reference set.
- :class:`I3DFeatures`: a Kinetics-400 I3D as the TorchScript file the FVD literature uses
  (``i3d_torchscript.pt``, StyleGAN-V convention: uint8-range input, resized inside) -> FVD.
- :class:`FrameFeatures`: any image network applied per frame, the clip's frame features
  concatenated (an offline FVD proxy; not comparable to I3D FVD).
- :class:`CLIPFeatures`: a local transformers CLIP: image and text embeddings for frame
  consistency and text-image similarity (ACDC's metrics).

Nothing here downloads: every network takes a local path and fails with the fix if absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch


class FeatureNetwork(Protocol):
    name: str
    predicts_fmnist_classes: bool  # logits index Fashion-MNIST classes (class accuracy is meaningful)

    def __call__(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def _to_uint8_range_rgb(x: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """[-1, 1] samples -> float [0, 255] with 3 channels (grey repeated, as FID tooling does)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
    if x.shape[channel_dim] == 1:
        x = x.repeat_interleave(3, dim=channel_dim)
    if x.shape[channel_dim] != 3:
        raise ValueError(f"feature networks read 1- or 3-channel samples, got {x.shape[channel_dim]} channels "
                         f"(shape {tuple(x.shape)}); decode latents to pixels first")
    return x


def _check_file(path, what: str, hint: str) -> Path:
    if path is None:
        raise ValueError(f"{what}: give the local weight file path ({hint}); nothing is downloaded")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is not a file ({hint}); nothing is downloaded")
    return path


# ---------------------------------------------------------------------------
#                       Fashion-MNIST classifier (offline)
# ---------------------------------------------------------------------------
class FMNISTFeatures:
    name = "fmnist"
    predicts_fmnist_classes = True

    def __init__(self, path=None, device="cpu", model=None):
        from ardiff.eval.fmnist_classifier import FashionMNISTClassifier

        self.model = model if model is not None else FashionMNISTClassifier.load(path, device=device)

    @classmethod
    def from_model(cls, model) -> "FMNISTFeatures":
        """Wrap an in-memory classifier (e.g. freshly trained or random, for tests)."""
        return cls(model=model)

    def __call__(self, samples):
        from ardiff.eval.fmnist_classifier import classify

        return classify(self.model, samples)


# ---------------------------------------------------------------------------
#                       Inception-V3 (torch-fidelity, local weights)
# ---------------------------------------------------------------------------
class InceptionFeatures:
    """torch-fidelity's FID Inception-V3 from a local weight file.

    Needs ``pip install torch-fidelity`` with a torchvision built for the installed torch.
    """

    name = "inception"
    predicts_fmnist_classes = False

    def __init__(self, weights_path, device="cpu", batch_size: int = 64, net=None):
        """``net``: a module with torch-fidelity's interface (uint8 (N, 3, H, W) -> (features (N, 2048),
        logits)) used instead of loading the weights: tests run stand-ins through this same wrapper."""
        self.device = torch.device(device)
        self.batch_size = batch_size
        if net is not None:
            self.net = net.to(device).eval()
            return
        path = _check_file(weights_path, "Inception-V3 weights",
                           "torch-fidelity's pt_inception-2015-12-05-6726825d.pth")
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except Exception as e:  # ImportError, or torchvision failing to load its operators
            raise ImportError(
                f"Inception features need torch-fidelity and a torchvision that matches torch "
                f"{torch.__version__} ({type(e).__name__}: {e}); install them (pip install torch-fidelity) "
                f"or score with the offline FID-FMNIST network"
            ) from e
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        ).to(device).eval()

    @torch.no_grad()
    def __call__(self, samples):
        feats, logits = [], []
        for i in range(0, len(samples), self.batch_size):
            x = _to_uint8_range_rgb(samples[i : i + self.batch_size]).to(self.device, torch.uint8)
            f, lg = self.net(x)
            feats.append(f.cpu())
            logits.append(lg.cpu())
        return torch.cat(feats), torch.cat(logits)


# ---------------------------------------------------------------------------
#                       I3D (TorchScript, local file) for FVD
# ---------------------------------------------------------------------------
class I3DFeatures:
    """The FVD literature's I3D TorchScript, called as StyleGAN-V does.

    Input clips (N, C, F, H, W) in [-1, 1] become float [0, 255] RGB; the network rescales
    and resizes to 224 itself (``rescale=True, resize=True``) and returns its 400-d
    pre-softmax features. I3D was trained on >= 9-frame clips; FVD papers use 16 frames.
    TorchScript runs code stored in the file: load only files you trust.
    """

    name = "i3d"
    predicts_fmnist_classes = False

    def __init__(self, path, device="cpu", batch_size: int = 16, net=None):
        """``net``: a module called like the TorchScript file (tests), used instead of loading ``path``."""
        if net is None:
            path = _check_file(path, "I3D network", "the TorchScript i3d_torchscript.pt used for FVD")
            net = torch.jit.load(str(path), map_location=device)
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, clips):
        if clips.dim() != 5:
            raise ValueError(f"I3D reads clips (N, C, F, H, W), got shape {tuple(clips.shape)}")
        feats = []
        for i in range(0, len(clips), self.batch_size):
            x = _to_uint8_range_rgb(clips[i : i + self.batch_size]).to(self.device)
            feats.append(self.net(x, rescale=True, resize=True, return_features=True).float().cpu())
        return torch.cat(feats), None


class FrameFeatures:
    """Per-frame features of an image network, concatenated over the clip (offline FVD proxy)."""

    predicts_fmnist_classes = False

    def __init__(self, image_network: FeatureNetwork):
        self.image_network = image_network
        self.name = f"{image_network.name}_frames"

    def per_frame(self, clips):
        """(N, C, F, H, W) -> features (N, F, D), logits (N, F, K) or None."""
        n, c, f, h, w = clips.shape
        feats, logits = self.image_network(clips.transpose(1, 2).reshape(n * f, c, h, w))
        return feats.view(n, f, -1), None if logits is None else logits.view(n, f, -1)

    def __call__(self, clips):
        feats, _ = self.per_frame(clips)
        return feats.flatten(1), None


# ---------------------------------------------------------------------------
#                       CLIP (transformers, a local directory)
# ---------------------------------------------------------------------------
class CLIPFeatures:
    """A local CLIP (a transformers ``CLIPModel`` directory with its processor) for the paper's
    frame consistency and text-image similarity: unit-norm image and text embeddings."""

    name = "clip"

    def __init__(self, directory, device="cpu", batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"CLIP directory {directory} not found or has no config.json; give a local "
                                    f"transformers CLIP model (e.g. openai/clip-vit-base-patch32 saved with "
                                    f"save_pretrained)")
        self.model = CLIPModel.from_pretrained(directory, local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(directory, local_files_only=True)
        self.device, self.batch_size = device, batch_size

    @staticmethod
    def _embedding(output) -> torch.Tensor:
        # get_*_features returns a tensor, or in newer transformers an output with pooler_output.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def images(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, D) unit vectors."""
        pixels = _to_uint8_range_rgb(frames).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for i in range(0, len(pixels), self.batch_size):
            batch = self.processor(images=list(pixels[i:i + self.batch_size]), return_tensors="pt")
            out.append(self._embedding(self.model.get_image_features(pixel_values=batch["pixel_values"]
                                                                     .to(self.device))).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (N, D) unit vectors (truncated to CLIP's context length)."""
        batch = self.processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return torch.nn.functional.normalize(self._embedding(self.model.get_text_features(**batch)).float().cpu(),
                                             dim=-1)
