"""How RevBiFPN's inside padding (inputs that are not multiples of 32) compares with a padded input.

    python tools/border_check.py [--size 512 683] [--arch s0] [--seed 0]

Builds the mmseg ADE20K FCN config of ``--arch`` (random init, eval mode) and runs one random image
of ``--size`` (default 512x683, what mmseg's ADE20K test pipeline makes of a 4:3 image) twice:

* as an HRNet config runs it: no test-time padding, the backbone pads inside and crops its outputs
  to ``ceil(H / s) x ceil(W / s)``;
* as the shipped RevBiFPN configs run it: ``data_preprocessor.test_cfg.size_divisor=32`` pads the
  image, the logits are cropped back.

Prints the backbone features' largest difference from the zero-padded input's (cropped), and the
logits' difference and the argmax agreement, in the 32-pixel band at the bottom / right border and
inside it.
"""
import argparse
import os.path as osp

import torch
import torch.nn.functional as F

import revbifpn_mm  # noqa: F401

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def build(arch: str, seed: int) -> torch.nn.Module:
    from mmengine.config import Config

    from bench.models import build as build_in_scope
    cfg = Config.fromfile(osp.join(REPO, "configs", "mmseg", f"fcn_revbifpn_{arch}_4xb4-80k_ade20k-512x512.py"))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(seed)
    model = build_in_scope(cfg.model, "mmseg")
    model.init_weights()
    return model.eval()


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
    model = build(args.arch, args.seed)
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(args.seed))
    model.data_preprocessor.test_cfg = None
    x = model.data_preprocessor(dict(inputs=[img]), False)["inputs"]
    with torch.no_grad():
        inside = model.backbone(x)
        padded = model.backbone(F.pad(x, (0, -w % 32, 0, -h % 32)))
    feat_diff = max((a - b[..., :a.shape[-2], :a.shape[-1]]).abs().max().item() for a, b in zip(inside, padded))
    print(f"features, inside padding vs the zero-padded input (cropped): max abs diff {feat_diff:.3g}")
    a, b = logits(model, img, None), logits(model, img, dict(size_divisor=32))
    border = torch.zeros(h, w, dtype=torch.bool)
    border[-32:, :] = True
    border[:, -32:] = True
    diff = (a - b).abs().amax(0)
    same = a.argmax(0) == b.argmax(0)
    scale = b.abs().max().item()
    for name, where in (("border band (last 32 px)", border), ("interior", ~border)):
        print(f"logits {h}x{w}, {name}: max abs diff {diff[where].max().item() / scale:.3g} of the largest logit, "
              f"mean {diff[where].mean().item() / scale:.3g}; same argmax at {same[where].float().mean().item():.2%} "
              "of the pixels")


if __name__ == "__main__":
    main()
