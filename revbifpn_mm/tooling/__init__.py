"""Support code of ``tools/`` and the quickstart demo: runner pre-flight, CPU distributed
set-up, the synthetic dataset.

Not part of the mmdet/mmseg plugin, which is :mod:`revbifpn_mm.mm`. Layering: this
package may import :mod:`revbifpn_mm.mm`, :mod:`revbifpn_mm.models` and
:mod:`revbifpn_mm.core`; none of them imports it. Nothing is imported here, so each
module loads only what it needs (e.g. :mod:`revbifpn_mm.tooling.synthetic` needs only
numpy and Pillow).

Modules:
    runner: pre-flight checks of a config (codebase scope, datasets, pretrained
        checkpoint) and building the mmengine runner.
    dist: distributed training on CPU-only PyTorch (gloo) through the mmengine runner.
    synthetic: the deterministic synthetic shapes dataset (COCO and MMSeg layouts);
        ``python -m revbifpn_mm.tooling.synthetic --root data/synthetic_coco``.
    curves: deterministic training configs and loss curves (reversible vs plain).
    fidelity: gradient fidelity of the reversible backward against plain autograd.
"""
