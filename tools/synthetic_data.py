"""Deterministic synthetic shapes dataset in COCO and MMSegmentation layouts.

Every image shows one to four shapes (``circle``, ``square``, ``triangle``), each class with its own
colour family, on a noisy background: a detector or segmentor learns them within minutes on a CPU.
Under ``root``: ``{train,val}/*.jpg``, ``annotations/instances_{train,val}.json`` (COCO, bbox +
polygons), ``seg/img/{train,val}`` (the same images) and ``seg/ann/{train,val}/*.png`` (uint8 label
maps, 0 = background), and ``.complete`` (the parameters, written last). numpy, Pillow and the
standard library only; importing touches neither disk nor network.

    python tools/synthetic_data.py --root data/synthetic_coco
    python tools/synthetic_data.py --root data/dense_coco --image-size 800 1344 --instances 100 300
"""
import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

__all__ = ["CLASSES", "SEG_CLASSES", "PALETTE", "GENERATOR_VERSION", "MARKER_NAME", "generate_synthetic_coco", "main"]

#: Detection class names; COCO category ids are ``index + 1``.
CLASSES: Tuple[str, ...] = ("circle", "square", "triangle")
#: Segmentation class names; label value ``i`` is ``SEG_CLASSES[i]``.
SEG_CLASSES: Tuple[str, ...] = ("background",) + CLASSES
#: Base RGB colour of each detection class (the drawn colour is jittered).
PALETTE: Tuple[Tuple[int, int, int], ...] = ((220, 50, 50), (50, 190, 70), (50, 90, 225))
#: Bump whenever the generated content changes; part of the marker parameters.
GENERATOR_VERSION = 1
#: Name of the completion marker inside ``root``.
MARKER_NAME = ".complete"

_SPLITS = ("train", "val")
_CIRCLE_POINTS = 24
_COLOR_JITTER = 30
_NOISE_SIGMA = 6.0
_MIN_SIZE = 20.0
_MAX_SIZE = 100.0
_PLACEMENT_TRIES = 50
_DEFAULT_INSTANCES = (1, 4)
_DENSE_FILL = 1.5  # dense images: the largest object spans at most sqrt(area / (1.5 * instances)) px
_JPEG_QUALITY = 95


def _shape_polygon(label: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """The ``(x, y)`` vertices (N, 2) of shape ``CLASSES[label]`` of diameter ``size``, centred on the
    origin, randomly rotated by ``rng``."""
    radius = size / 2.0
    if label == 0:  # circle
        phase = rng.uniform(0.0, 2.0 * math.pi / _CIRCLE_POINTS)
        angles = phase + np.arange(_CIRCLE_POINTS) * (2.0 * math.pi / _CIRCLE_POINTS)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius
    if label == 1:  # square, slightly rotated; half side chosen so it spans ~size
        theta = rng.uniform(-math.pi / 8.0, math.pi / 8.0)
        half = radius / (abs(math.cos(theta)) + abs(math.sin(theta)))
        corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * half
    else:  # equilateral triangle with a random rotation
        theta = rng.uniform(0.0, 2.0 * math.pi)
        angles = np.array([0.0, 2.0 * math.pi / 3.0, 4.0 * math.pi / 3.0]) - math.pi / 2.0
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return corners @ rot.T


def _signed_area(points: np.ndarray) -> float:
    """Shoelace area of a simple polygon given as (N, 2) vertices, positive when counter-clockwise."""
    x, y = points[:, 0], points[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _convex_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean HxW mask of the pixels whose centre lies inside the convex polygon ``points`` (N, 2).

    Coordinates follow COCO: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, centre ``(j + 0.5, i + 0.5)``.
    """
    mask = np.zeros((height, width), dtype=bool)
    x0 = max(int(math.floor(points[:, 0].min())), 0)
    x1 = min(int(math.ceil(points[:, 0].max())), width)
    y0 = max(int(math.floor(points[:, 1].min())), 0)
    y1 = min(int(math.ceil(points[:, 1].max())), height)
    if x1 <= x0 or y1 <= y0:
        return mask
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    orientation = 1.0 if _signed_area(points) >= 0 else -1.0
    inside = np.ones((y1 - y0, x1 - x0), dtype=bool)
    for k in range(len(points)):
        ax, ay = points[k]
        bx, by = points[(k + 1) % len(points)]
        cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        inside &= orientation * cross >= 0
    mask[y0:y1, x0:x1] = inside
    return mask


def _boxes_intersect(a: Sequence[float], b: Sequence[float], margin: float) -> bool:
    """Whether two ``[x1, y1, x2, y2]`` boxes, grown by ``margin``, intersect."""
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _size_range(height: int, width: int, max_instances: int) -> Tuple[float, float]:
    """Object size range for an image; 20-100 px for images of 256 px or more. With more than the
    default four objects per image the largest size shrinks so that they all find a free spot."""
    hi = min(_MAX_SIZE, 0.45 * min(height, width))
    if max_instances > _DEFAULT_INSTANCES[1]:
        hi = min(hi, math.sqrt(height * width / (_DENSE_FILL * max_instances)))
    lo = min(_MIN_SIZE, hi / 2.0)
    return lo, max(hi, lo + 1.0)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-frequency colour texture plus a fine stripe pattern, float32 HxWx3."""
    base = rng.uniform(85.0, 170.0)
    # Mostly luminance variation with a little chroma: the shapes' colours stay distinctive.
    grid = (base + rng.uniform(-35.0, 35.0, size=(6, 6, 1)) + rng.uniform(-15.0, 15.0, size=(6, 6, 3))
            + rng.uniform(-10.0, 10.0, size=(1, 1, 3)))
    coarse = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), mode="RGB")
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    # Faint oriented stripes make the background "textured" rather than flat.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0.0, math.pi)
    freq = rng.uniform(0.08, 0.3)
    stripes = 8.0 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    return smooth + stripes[..., None]


def _render_image(rng: np.random.Generator, height: int, width: int,
                  instances: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray, List[Dict[str, Any]]]:
    """One image from its own ``rng``: ``(rgb, label_map, objects)``, a uint8 HxWx3 image, a uint8 HxW
    label map (0 = background, ``k`` = ``CLASSES[k - 1]``) and per object its COCO annotation's
    ``category_id``, ``bbox``, ``area`` and ``segmentation`` (one polygon, a flat list of rounded floats).
    ``instances``: the range (inclusive) the number of objects tried is drawn from; an object with no
    free spot is dropped."""
    rgb = _background(rng, height, width)
    label_map = np.zeros((height, width), dtype=np.uint8)

    lo, hi = _size_range(height, width, instances[1])
    num_objects = int(rng.integers(instances[0], instances[1] + 1))
    placed: List[List[float]] = []
    objects: List[Dict[str, Any]] = []
    for _ in range(num_objects):
        label = int(rng.integers(0, len(CLASSES)))
        size = float(rng.uniform(lo, hi))
        shape = _shape_polygon(label, size, rng)
        ext_lo, ext_hi = shape.min(axis=0), shape.max(axis=0)
        for _try in range(_PLACEMENT_TRIES):
            # Keep the whole polygon at least 1 px inside the image.
            cx = rng.uniform(1.0 - ext_lo[0], width - 1.0 - ext_hi[0])
            cy = rng.uniform(1.0 - ext_lo[1], height - 1.0 - ext_hi[1])
            pts = np.round(shape + np.array([cx, cy]), 2)
            box = [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]
            if not any(_boxes_intersect(box, other, margin=3.0) for other in placed):
                break
        else:
            continue  # no free spot: drop this object
        placed.append(box)
        colour = np.clip(np.array(PALETTE[label]) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3), 0, 255)
        # Image and label map share one raster, so they agree pixel for pixel.
        mask = _convex_mask(pts, height, width)
        rgb[mask] = colour
        label_map[mask] = label + 1
        objects.append({"category_id": label + 1,
                        "bbox": [round(v, 2) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])],
                        "area": round(abs(_signed_area(pts)), 2),
                        "segmentation": [[round(float(v), 2) for v in pts.reshape(-1)]]})

    rgb = rgb + rng.normal(0.0, _NOISE_SIGMA, size=rgb.shape).astype(np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), label_map, objects


def _write_split(work: Path, split: int, num_images: int, image_size: Tuple[int, int], seed: int,
                 instances: Tuple[int, int]) -> Dict[str, int]:
    """Writes the images, label maps and COCO json of one split into ``work``."""
    name = _SPLITS[split]
    height, width = image_size
    img_dir = work / name
    seg_img_dir = work / "seg" / "img" / name
    seg_ann_dir = work / "seg" / "ann" / name
    for d in (img_dir, seg_img_dir, seg_ann_dir, work / "annotations"):
        d.mkdir(parents=True, exist_ok=True)

    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for index in range(num_images):
        # One independent stream per image: image k is the same whatever the counts.
        rng = np.random.default_rng([seed, split, index])
        rgb, label_map, objects = _render_image(rng, height, width, instances)
        image_id = index + 1
        stem = f"{image_id:06d}"
        file_name = f"{stem}.jpg"
        Image.fromarray(rgb, mode="RGB").save(img_dir / file_name, format="JPEG", quality=_JPEG_QUALITY)
        try:  # the same image for the seg layout: a hard link where the file system has them
            os.link(img_dir / file_name, seg_img_dir / file_name)
        except OSError:
            shutil.copyfile(img_dir / file_name, seg_img_dir / file_name)
        Image.fromarray(label_map, mode="L").save(seg_ann_dir / f"{stem}.png", format="PNG")
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj, "iscrowd": 0})

    coco = {"info": {"description": f"revbifpn_mm synthetic shapes ({name})", "version": str(GENERATOR_VERSION),
                     "year": 2024},
            "licenses": [],
            "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)],
            "images": images, "annotations": annotations}
    with open(work / "annotations" / f"instances_{name}.json", "w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))
    return {"images": len(images), "annotations": len(annotations)}


def _params(num_train: int, num_val: int, image_size: Tuple[int, int], seed: int,
            instances: Tuple[int, int]) -> Dict[str, Any]:
    params = {"generator_version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
              "image_size": [int(image_size[0]), int(image_size[1])], "seed": int(seed)}
    if tuple(instances) != _DEFAULT_INSTANCES:  # the default keeps the marker of existing datasets valid
        params["instances"] = [int(instances[0]), int(instances[1])]
    return params


def _read_marker(root: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(root / MARKER_NAME, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _summary(root: Path, counts: Dict[str, Dict[str, int]], cached: bool) -> Dict[str, Any]:
    return {"root": str(root), "train_img_dir": str(root / "train"), "val_img_dir": str(root / "val"),
            "train_ann_file": str(root / "annotations" / "instances_train.json"),
            "val_ann_file": str(root / "annotations" / "instances_val.json"),
            "seg_img_dirs": {s: str(root / "seg" / "img" / s) for s in _SPLITS},
            "seg_ann_dirs": {s: str(root / "seg" / "ann" / s) for s in _SPLITS},
            "classes": list(CLASSES), "seg_classes": list(SEG_CLASSES),
            "num_images": {s: counts[s]["images"] for s in _SPLITS},
            "num_annotations": {s: counts[s]["annotations"] for s in _SPLITS}, "cached": cached}


def _build_and_swap(root: Path, params: Dict[str, Any]) -> Dict[str, Any]:
    """Writes the dataset in a temporary sibling of ``root``, the marker last, and renames it into place."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work = root.parent / f".{root.name}.tmp-{tag}"
    work.mkdir()
    size = tuple(params["image_size"])
    instances = tuple(params.get("instances", _DEFAULT_INSTANCES))
    try:
        counts = {name: _write_split(work, split, n, size, params["seed"], instances)
                  for split, (name, n) in enumerate(zip(_SPLITS, (params["num_train"], params["num_val"])))}
        with open(work / MARKER_NAME, "w", encoding="utf-8") as f:
            json.dump({"params": params, "counts": counts}, f, indent=2, sort_keys=True)
        old = None
        if root.exists():
            old = root.parent / f".{root.name}.old-{tag}"
            os.rename(root, old)
        try:
            os.rename(work, root)
        except OSError:
            # Lost a race with a concurrent writer: accept its result if it matches.
            other = _read_marker(root)
            if other is not None and other.get("params") == params:
                return _summary(root, other["counts"], cached=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return _summary(root, counts, cached=False)


def generate_synthetic_coco(root: Union[str, os.PathLike], num_train: int = 200, num_val: int = 50,
                            image_size: Tuple[int, int] = (256, 256), seed: int = 0,
                            overwrite: bool = False, instances: Tuple[int, int] = _DEFAULT_INSTANCES
                            ) -> Dict[str, Any]:
    """Writes (or reuses) the synthetic shapes dataset under ``root``.

    Deterministic (the same ``seed`` gives byte-identical files). Built in a temporary sibling
    directory and renamed into place, the ``.complete`` marker last, so ``root`` is either absent,
    complete, or foreign. ``overwrite`` regenerates even a complete dataset of the same parameters
    and replaces a foreign non-empty ``root``. ``instances`` is the range of objects tried per image
    (default 1-4; e.g. ``(100, 300)`` for a dense dataset, where the objects get smaller so that
    they fit). Returns the roots, image folders and annotation files per split, the class names,
    the counts, and ``cached`` (an existing dataset was reused).

    Raises:
        ValueError: If a count is negative, the image is smaller than 16 px or the instance range
            is empty.
        FileExistsError: If ``root`` is a non-empty directory without a marker
            from this function and ``overwrite`` is False.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"image_size must be (height, width) with both >= 16, got {image_size!r}")
    if len(instances) != 2 or not 1 <= instances[0] <= instances[1]:
        raise ValueError(f"instances must be (fewest, most) objects per image with 1 <= fewest <= most, "
                         f"got {instances!r}")
    root = Path(root)
    params = _params(num_train, num_val, image_size, seed, instances)
    marker = _read_marker(root)
    if not overwrite and marker is not None and marker.get("params") == params:
        return _summary(root, marker["counts"], cached=True)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if root.exists() and marker is None and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is a non-empty directory that was not written by generate_synthetic_coco; "
                              "pass overwrite=True to replace it")
    return _build_and_swap(root, params)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: write the dataset (``argv`` defaults to ``sys.argv[1:]``), print a summary, return 0."""
    parser = argparse.ArgumentParser(prog="python tools/synthetic_data.py", description=(
        "Generate the deterministic synthetic shapes dataset (COCO + MMSeg layouts)."))
    parser.add_argument("--root", default="data/synthetic_coco", help="output directory")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instances", type=int, nargs=2, default=_DEFAULT_INSTANCES, metavar=("MIN", "MAX"),
                        help="objects tried per image (default 1 4; e.g. 100 300 for a dense dataset)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    info = generate_synthetic_coco(args.root, num_train=args.num_train, num_val=args.num_val,
                                   image_size=tuple(args.image_size), seed=args.seed, overwrite=args.overwrite,
                                   instances=tuple(args.instances))
    elapsed = time.perf_counter() - start
    state = "up to date (reused)" if info["cached"] else f"generated in {elapsed:.1f}s"
    lines = [f"synthetic dataset at {info['root']}: {state}",
             f"  classes: {', '.join(info['classes'])} (seg label 0 = background)"]
    lines += [f"  {split}: {info['num_images'][split]} images, {info['num_annotations'][split]} objects, "
              f"ann {info[split + '_ann_file']}" for split in _SPLITS]
    lines.append(f"  seg: img {info['seg_img_dirs']['train']}, ann {info['seg_ann_dirs']['train']} (and val)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
