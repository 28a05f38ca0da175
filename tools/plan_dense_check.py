"""Does the plan hold on crowded images? The planner's synthetic batch against the densest real images.

    python tools/plan_dense_check.py --root data/dense_coco --image-size 800 1344 --instances 100 300

Writes (or reuses) a COCO-layout dataset with that many polygons per image (``tools/synthetic_data.py``), points
Mask R-CNN S3 (``--config``) at it, and measures at batch 1 and 2, each in a fresh process, the planner's
synthetic batch against the dataset's densest images through the config's pipeline (docs/planner.md, Checks).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["dense_options", "compare", "main"]

MASK_S3 = "configs/mask_rcnn_revbifpn_s3.py"


def dense_options(root: str, height: int, width: int) -> Dict[str, Any]:
    """``--cfg-options`` pointing an mmdet COCO config at a generated dataset, its Resize at (height, width)."""
    return {"train_dataloader.dataset.data_root": root.rstrip("/") + "/",
            "train_dataloader.dataset.ann_file": "annotations/instances_train.json",
            "train_dataloader.dataset.data_prefix": dict(img="train/"),
            "train_dataloader.dataset.metainfo": dict(classes=("circle", "square", "triangle")),
            "train_dataloader.dataset.pipeline.2.scale": (width, height)}


def compare(config: str, options: Dict[str, Any], batches: Sequence[int] = (1, 2), threads: Optional[int] = None,
            timeout: float = 3600) -> List[Tuple[Any, Any]]:
    """Per batch, ``(planned, real)`` :class:`planner.Probe`: the synthetic batch with the data's most
    instances at the data's box sizes, and the densest images of the data through the pipeline."""
    import planner
    from plan_memory import instances_to_plan

    count, _, fmt, sides = instances_to_plan(planner.load_config(config, options))
    out = []
    for batch in batches:
        kw = dict(cfg_options=options, threads=threads, timeout=timeout)
        planned = planner.probe_in_subprocess(config, "reversible", batch, None, instances=count, mask_format=fmt,
                                              box_sides=sides, **kw)
        real = planner.probe_in_subprocess(config, "reversible", batch, None, data="dataset", **kw)
        out.append((planned, real))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: generate the dense dataset, compare, print one line per batch."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/dense_coco")
    ap.add_argument("--image-size", type=int, nargs=2, default=(800, 1344), metavar=("H", "W"))
    ap.add_argument("--instances", type=int, nargs=2, default=(100, 300), metavar=("MIN", "MAX"))
    ap.add_argument("--num-images", type=int, default=4)
    ap.add_argument("--config", default=MASK_S3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    from synthetic_data import generate_synthetic_coco

    h, w = args.image_size
    info = generate_synthetic_coco(args.root, num_train=args.num_images, num_val=1, image_size=(h, w),
                                   instances=tuple(args.instances))
    for planned, real in compare(args.config, dense_options(info["root"], h, w), threads=args.threads):
        line = (f"batch {planned.batch}, {real.shape[0]}x{real.shape[1]}, {real.instances} instances per image: "
                f"predicted {planned.peak_bytes / 1e9:.3f} GB, measured {real.peak_bytes / 1e9:.3f} GB "
                f"({100 * (planned.peak_bytes - real.peak_bytes) / real.peak_bytes:+.1f} %); forward + backward "
                f"{planned.fwd_bwd_bytes / 1e9:.3f} / {real.fwd_bwd_bytes / 1e9:.3f} GB "
                f"({100 * (planned.fwd_bwd_bytes - real.fwd_bwd_bytes) / real.fwd_bwd_bytes:+.1f} %)")
        if real.assign_peak_bytes is not None:
            line += (f"; measured anchor assignment peak {real.assign_peak_bytes / 1e9:.3f} GB, "
                     f"the rest {real.outside_assign_bytes / 1e9:.3f} GB")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
