"""How strongly does a text-conditional model use its condition? Denoising error (epsilon MSE)
with each sample's own condition, with another sample's (shuffled), and with the null
condition, per noise level. A model that follows its text predicts clearly better with its
own condition; equal errors mean the text barely reaches the noisy tokens.

    python scripts/diagnose_conditioning.py [MODEL] [--num 256]

MODEL: a shipped name or directory of a story-world model (story-corrector, story-arm).
"""

from __future__ import annotations

import argparse

import torch

from ardiff.diffusion.schedule import NoiseSchedule
from ardiff.models import ACDiT
from ardiff.models.resolve import resolve_model_dir
from ardiff.worlds.datasets import StoryDataset, StoryFrameDataset


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="story-corrector")
    parser.add_argument("--num", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ACDiT.from_pretrained(resolve_model_dir(args.model))
    c = model.config
    dataset = (StoryDataset("test", length=c.input_size[0], num_stories=args.num) if c.is_video
               else StoryFrameDataset("test", num_frames=args.num))
    items = [dataset[i] for i in range(args.num)]
    x0 = torch.stack([x for x, _ in items])
    cond = torch.stack([torch.as_tensor(y) for _, y in items])
    schedule = NoiseSchedule.from_config(c)
    g = torch.Generator().manual_seed(0)
    shuffled = cond[torch.randperm(len(cond), generator=g)]
    print(f"{args.model}: epsilon MSE by noise level, N={args.num} (own / shuffled / null condition;"
          f" x0 = what the predicted clean sample gets wrong)")
    for t in (100, 300, 500, 700, 900):
        noise = torch.randn(x0.shape, generator=g)
        tt = torch.full((len(x0), c.num_blocks), t)
        x_t = schedule.add_noise(model.to_blocks(x0), model.to_blocks(noise), tt)
        x_t = model.from_blocks(x_t)
        errors, by_block = [], []
        for y, drop in ((cond, None), (shuffled, None), (cond, torch.ones(len(x0), dtype=torch.bool))):
            eps = model(x_t, tt, y, x0, drop_cond=drop)
            squared = model.to_blocks((eps - noise) ** 2)  # (B, T, S, P)
            errors.append(squared.mean().item())
            by_block.append(squared.mean(dim=(0, 2, 3)))
        own, other, null = errors
        ab = schedule.alphas_cumprod[t].item()
        x0_scale = (1 - ab) / ab  # epsilon MSE -> MSE of the predicted clean sample
        print(f"  t={t:3d}: eps {own:.4f} / {other:.4f} / {null:.4f};  x0 {own * x0_scale:.4f} / "
              f"{other * x0_scale:.4f} / {null * x0_scale:.4f}")
        if c.num_blocks > 1:  # per block: block 0 has no context, so only the text can tell it what to draw
            ratio = " ".join(f"{(o / n).item():.2f}" for o, n in zip(by_block[0], by_block[2]))
            print(f"         own / null by block: {ratio}")


if __name__ == "__main__":
    main()
