"""Does colour matching help repeated SDEdit? Correct the same frames k times in a chain with
the shipped Fashion-MNIST ACDiT as corrector, with and without `match_color`, and measure the
drift of per-image intensity statistics and the classifier's accuracy on the true class.

    python scripts/color_match_drift.py [--num 64] [--rounds 4] [--t-prime 0.5]
"""

import argparse
import json

import torch

from ardiff.acdc.native import FMNIST_PROMPT_NAMES, NativeCorrector
from ardiff.acdc.pipeline import match_color
from ardiff.data.fashion_mnist import FashionMNIST
from ardiff.eval.features import FMNISTFeatures
from ardiff.models.acdit import ACDiT
from ardiff.models.resolve import resolve_model_dir


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--t-prime", type=float, default=0.5)
    args = p.parse_args()
    data = FashionMNIST(split="test", pad_to=32)
    x0 = data.images[: args.num].float().unsqueeze(1) / 127.5 - 1 if data.images.dim() == 3 else \
        data.images[: args.num].float() / 127.5 - 1
    labels = data.labels[: args.num]
    corrector = NativeCorrector(ACDiT.from_pretrained(resolve_model_dir("fmnist")), num_steps=25, cfg_scale=5.0)
    classifier = FMNISTFeatures()
    result = {}
    for matched in (False, True):
        x, rows = x0.clone(), []
        for r in range(1, args.rounds + 1):
            out = []
            for i in range(args.num):  # one prompt per image: its true class
                c = corrector.correct(x[i:i + 1], FMNIST_PROMPT_NAMES[int(labels[i])], args.t_prime,
                                      torch.Generator().manual_seed(1000 * r + i)).frames
                out.append(match_color(c, x[i:i + 1]) if matched else c)
            x = torch.cat(out)
            _, logits = classifier(x)
            rows.append({"round": r,
                         "mean_abs_drift": float((x.mean((1, 2, 3)) - x0.mean((1, 2, 3))).abs().mean()),
                         "std_abs_drift": float((x.std((1, 2, 3)) - x0.std((1, 2, 3))).abs().mean()),
                         "pixel_l1_to_input": float((x - x0).abs().mean()),
                         "class_accuracy": float((logits.argmax(1) == labels).float().mean())})
            print(("matched" if matched else "plain  "), rows[-1], flush=True)
        result["color_match" if matched else "plain"] = rows
    print(json.dumps(result))


if __name__ == "__main__":
    main()
