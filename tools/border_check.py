"""Logits of an input that is not a multiple of 32: inside padding vs test-time padding (docs/segmentation.md).

    python tools/border_check.py [--size 512 683] [--arch s0] [--seed 0]

Runs one random image through the mmseg ADE20K FCN config of ``--arch`` (random init, eval mode) as an
HRNet config does (no test-time padding: the backbone pads inside) and as the shipped configs do
(``size_divisor=32``), and prints the logits' difference and argmax agreement in the 32-pixel band at
the bottom / right border and inside it. That the backbone's features equal those of the zero-padded
input is asserted by ``tests/mm/test_dropin_edges.py``.
"""
import argparse

import torch

from bench.models import build, config

CONFIG = "configs/mmseg/fcn_revbifpn_{}_4xb4-80k_ade20k-512x512.py"


def logits(model: torch.nn.Module, img: torch.Tensor, test_cfg) -> torch.Tensor:
    from mmseg.structures import SegDataSample
    h, w = img.shape[-2:]
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
    model.data_preprocessor.test_cfg = test_cfg
    with torch.no_grad():
        return model.test_step(dict(inputs=[img], data_samples=[sample]))[0].seg_logits.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 683))
    parser.add_argument("--arch", default="s0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    h, w = args.size
    cfg = config("repo", CONFIG.format(args.arch))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(args.seed)
    model = build(cfg.model, "mmseg")
    model.init_weights()
    model.eval()
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(args.seed))
    a, b = logits(model, img, None), logits(model, img, dict(size_divisor=32))
    border = torch.ones(h, w, dtype=torch.bool)  # the last 32 rows and columns
    border[:-32, :-32] = False
    diff = (a - b).abs().amax(0)
    same = a.argmax(0) == b.argmax(0)
    scale = b.abs().max().item()
    for name, where in (("border band (last 32 px)", border), ("interior", ~border)):
        print(f"logits {h}x{w}, {name}: max abs diff {diff[where].max().item() / scale:.3g} of the largest logit, "
              f"mean {diff[where].mean().item() / scale:.3g}; same argmax at {same[where].float().mean().item():.2%} "
              "of the pixels")


if __name__ == "__main__":
    main()
