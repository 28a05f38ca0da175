"""Training activation memory and step time: RevBiFPN (reversible vs plain) against HRNet and ResNet.

Measures side by side, in one process:
  * RevBiFPN S0-S6 backbones (trunk + per-scale output MBConvs), reversible and plain,
    alone and with the RevBiFPNNeck / HRFPN adapters;
  * HRNetV2p W18/W32/W48 and ResNet-50/101 backbones (mmdet's, or timm's where mmdet is
    absent, e.g. on a bare GPU machine);
  * Faster / Mask R-CNN detectors (RevBiFPN-S3 + RevBiFPNNeck, HRNetV2p-W18 + HRFPN,
    ResNet-101 + FPN) when mmdet is installed;
  * a depth sweep of the S0 width with 2/4/8/16 extension layers.

Memory per sample: on CUDA ``torch.cuda.max_memory_allocated`` during the timed steps minus
the memory allocated before them (parameters and gradients already allocated), divided by
the batch (mmdet's convention). On CPU: the bytes autograd saves for backward during the
forward, deduplicated by storage, parameters excluded (``SavedTensorCounter``), per sample;
and, on Linux, the peak working set of one training step: the process's peak resident
memory (VmHWM, reset through /proc/self/clear_refs) minus its resident memory before the
step, with glibc told to serve every allocation above 64 KiB by mmap so that freed tensors
leave the resident set at once. It tracks the CUDA figure (S3 backbone at 800x1344, code of
commit e44f62b, CPU vs H200: 0.712 vs 0.710 GB/sample with float64 streams, 0.415 vs 0.473
with float32 streams, 6.32 vs 6.37 plain). It under-reads small inputs: plain S0 with 16
extension layers at 128x128 reads 0.055 GB against 0.120 GB saved for backward (at 512x512:
1.84 vs 1.89), so read it at detection-sized inputs only.
Step time: median wall time of forward + backward (loss = sum of mean(f^2) over outputs). On
CPU the mmap threshold that the peak reading needs stays for the whole process (glibc serves
later requests from freed heap chunks first, so it cannot be switched back and forth). It slows
allocation-heavy steps by 20-40 % (S3 at 800x1344: 9.4 s against 7.7 s with glibc's defaults).
``--no-peak`` leaves glibc alone: no peak column, undistorted CPU step times.

Writes ``<out>/benchmark.json``, ``<out>/benchmark.md`` and ``<out>/benchmark.png``.

Examples:
    python tools/benchmark_memory.py --quick                  # a few minutes on 2 CPU cores
    python tools/benchmark_memory.py --device cuda --amp fp32,bf16
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from revbifpn_mm.core import saved_bytes
from revbifpn_mm.models import ARCH_SETTINGS, RevBiFPN


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss(outs: Any) -> torch.Tensor:
    if isinstance(outs, dict):  # mmdet/mmseg loss dict
        total = 0
        for k, v in outs.items():
            if "loss" in k:
                total = total + (sum(x.sum() for x in v) if isinstance(v, (list, tuple)) else v.sum())
        return total
    if isinstance(outs, torch.Tensor):
        outs = [outs]
    return sum(o.float().pow(2).mean() for o in outs)


_M_MMAP_THRESHOLD = -3
_PEAK_MMAP_THRESHOLD = 64 * 1024  # every tensor above 64 KiB is mmapped: freed at once


def _libc():
    import ctypes
    return ctypes.CDLL("libc.so.6")


def _cpu_peak_probe() -> bool:
    """Prepare peak-RSS measurement (Linux + glibc); False where unavailable."""
    try:
        if not os.access("/proc/self/clear_refs", os.W_OK):
            return False
        return bool(_libc().mallopt(_M_MMAP_THRESHOLD, _PEAK_MMAP_THRESHOLD))  # fixed, no dynamic growth
    except OSError:
        return False


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(run: Callable[[], Any], params: List[nn.Parameter], device: torch.device, batch: int,
            amp: str, warmup: int, steps: int, timed: bool = True, peak_rss: bool = False) -> Dict[str, float]:
    """Activation bytes per sample and median step time of ``loss(run()).backward()``.

    With ``peak_rss`` (CPU, after :func:`_cpu_peak_probe`) also the peak working set of one step.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def forward() -> Any:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return run()

    def step() -> None:
        _loss(forward()).backward()

    for _ in range(warmup):
        step()
    res: Dict[str, float] = {}
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        res["saved_bytes"] = saved_bytes(forward, exclude=params)
        if peak_rss:
            base = _vm("VmRSS:")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            step()
            res["peak_gb_per_sample"] = (_vm("VmHWM:") - base) / batch / 1e9
    times = []
    for _ in range(steps if timed else 0):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        res["saved_bytes"] = torch.cuda.max_memory_allocated(device) - base
    res["mem_gb_per_sample"] = res["saved_bytes"] / batch / 1e9
    res["step_s"] = statistics.median(times) if times else float("nan")
    for p in params:
        p.grad = None
    return res


# ------------------------------------------------------------------ builders
def build_revbifpn(arch: str, mode: str, neck: Optional[str], ext: Optional[int] = None,
                   stream: str = "float64", lean: str = "neck"):
    body = RevBiFPN(arch, num_classes=0, num_ext_layers=ext, memory_mode=mode, stream_dtype=stream,
                    lean_recompute=lean)
    if neck is None:
        return body
    from mmdet.registry import MODELS
    n = MODELS.build(dict(type=neck, in_channels=list(body.out_channels), out_channels=256))
    return nn.Sequential(body, n)


def build_baseline(name: str):
    """mmdet backbone where available, else timm (features_only), else None."""
    try:
        from mmdet.registry import MODELS
        if name.startswith("hrnet"):
            w = int(name[len("hrnet_w"):])
            extra = dict(
                stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(4,), num_channels=(64,)),
                stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(4, 4), num_channels=(w, 2 * w)),
                stage3=dict(num_modules=4, num_branches=3, block="BASIC", num_blocks=(4, 4, 4),
                            num_channels=(w, 2 * w, 4 * w)),
                stage4=dict(num_modules=3, num_branches=4, block="BASIC", num_blocks=(4, 4, 4, 4),
                            num_channels=(w, 2 * w, 4 * w, 8 * w)))
            return MODELS.build(dict(type="HRNet", extra=extra)), "mmdet"
        depth = int(name[len("resnet"):])
        return MODELS.build(dict(type="ResNet", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3),
                                 frozen_stages=-1, norm_eval=False)), "mmdet"
    except ImportError:
        pass
    try:
        import timm
        kw = dict(feature_location="") if name.startswith("hrnet") else {}
        return timm.create_model(name, features_only=True, pretrained=False, **kw), "timm"
    except ImportError:
        return None, None


def _mmdet_cfg(rel: str):
    import mmdet
    from mmengine.config import Config
    return Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", rel))


def build_detector(kind: str, backbone: str):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    if backbone.startswith("revbifpn"):
        arch = backbone.split("_")[1]
        cfg = _mmdet_cfg(f"{kind}_rcnn/{kind}-rcnn_r50_fpn_1x_coco.py")
        cfg.model.backbone = dict(type="RevBiFPN", arch=arch, norm_eval=True,
                                  lean_recompute="all" if backbone.endswith("_lean") else "neck")
        cfg.model.neck = dict(type="RevBiFPNNeck", in_channels=list(ARCH_SETTINGS[arch]["out_channels"]),
                              out_channels=256)
        cfg.model.data_preprocessor.pad_size_divisor = 32
    elif backbone == "hrnetv2p_w18":
        cfg = _mmdet_cfg(f"hrnet/{kind}-rcnn_hrnetv2p-w18-1x_coco.py")
    else:
        cfg = _mmdet_cfg(f"{kind}_rcnn/{kind}-rcnn_r101_fpn_1x_coco.py")
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


def detector_runner(model, batch: int, h: int, w: int, device: torch.device, with_mask: bool):
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(batch, [[3, h, w]] * batch, num_items=[5] * batch, with_mask=with_mask)
    data = model.data_preprocessor(packed, True)
    inputs = data["inputs"].to(device)
    samples = [s.to(device) for s in data["data_samples"]]
    return lambda: model.loss(inputs, samples)


# ---------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small input, few models: minutes on 2 CPU cores")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--height", type=int, default=None, help="default 800 (quick: 256)")
    ap.add_argument("--width", type=int, default=None, help="default 1344 (quick: 384)")
    ap.add_argument("--batch", type=int, default=None, help="default 2 on CUDA, 1 on CPU")
    ap.add_argument("--amp", default="fp32", help="comma list of fp32, bf16, fp16 (autocast)")
    ap.add_argument("--archs", default=None, help="comma list, default s0..s6 (quick: s0,s3); 'none' for no rows")
    ap.add_argument("--baselines", default=None,
                    help="default hrnet_w18,hrnet_w32,hrnet_w48,resnet50,resnet101; 'none' for no rows")
    ap.add_argument("--streams", default="float64",
                    help="residual-stream dtypes of the reversible rows (comma list of float64, float32)")
    ap.add_argument("--no-lean", action="store_true",
                    help="skip the lean_recompute='all' and 'none' rows (the default is 'neck')")
    ap.add_argument("--no-necks", action="store_true")
    ap.add_argument("--no-detectors", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-time", action="store_true", help="memory only (CPU: forward only)")
    ap.add_argument("--no-peak", action="store_true",
                    help="CPU: skip the peak working set (its glibc setting slows steps by 20-40 %%)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default="work_dirs/benchmark")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cpu = device.type == "cpu"
    H = args.height or (256 if args.quick else 800)
    W = args.width or (384 if args.quick else 1344)
    B = args.batch or (1 if cpu else 2)
    archs = [a for a in (args.archs or ("s0,s3" if args.quick else "s0,s1,s2,s3,s4,s5,s6")).split(",")
             if a and a != "none"]
    baselines = [b for b in (args.baselines or ("hrnet_w18,resnet50" if args.quick else
                                                "hrnet_w18,hrnet_w32,hrnet_w48,resnet50,resnet101")).split(",")
                 if b and b != "none"]
    amps = args.amp.split(",")
    warmup = args.warmup if args.warmup is not None else (1 if cpu else 2)
    steps = args.steps if args.steps is not None else (1 if cpu else 4)
    timed = not args.no_time
    peak_rss = cpu and not args.no_peak and _cpu_peak_probe()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        import revbifpn_mm.mm  # noqa: F401  registers RevBiFPNNeck (needs mmcv with ops)
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        have_mm = True
    except Exception as err:  # noqa: BLE001
        log(f"[benchmark] mm stack unavailable ({type(err).__name__}: {err}); necks/detectors skipped")
        have_mm = False

    rows: List[Dict[str, Any]] = []
    x = torch.randn(B, 3, H, W, device=device)

    def record(name: str, group: str, model: nn.Module, run: Callable[[], Any], amp: str, **extra: Any) -> None:
        params = [p for p in model.parameters()]
        n = sum(p.numel() for p in params)
        log(f"[benchmark] {name} ({amp}) ...")
        t0 = time.perf_counter()
        try:
            r = measure(run, params, device, B, amp, warmup, steps, timed, peak_rss)
        except torch.OutOfMemoryError:
            r = dict(mem_gb_per_sample=float("nan"), step_s=float("nan"), saved_bytes=float("nan"), oom=True)
            torch.cuda.empty_cache()
        row = dict(name=name, group=group, amp=amp, params_m=n / 1e6, **r, **extra)
        rows.append(row)
        peak = f", peak working set {row['peak_gb_per_sample']:.4f} GB/sample" if "peak_gb_per_sample" in row else ""
        log(f"[benchmark]   {row['mem_gb_per_sample']:.4f} GB/sample{peak}, step {row['step_s']:.3f} s "
            f"({time.perf_counter() - t0:.0f} s)")

    for amp in amps:
        for arch in archs:
            for mode in ("reversible", "plain"):
                m = build_revbifpn(arch, mode, None).to(device).train()
                record(f"revbifpn_{arch}_{mode}", "backbone", m, lambda m=m: m(x), amp, arch=arch, mode=mode)
                del m
            for stream in args.streams.split(","):
                if stream != "float64" and amp == "fp32":
                    m = build_revbifpn(arch, "reversible", None, stream=stream).to(device).train()
                    record(_variant(arch, stream), "backbone-variant", m, lambda m=m: m(x),
                           amp, arch=arch, mode="reversible", stream=stream)
                    del m
                for lean in () if args.no_lean or amp != "fp32" else ("all", "none"):
                    m = build_revbifpn(arch, "reversible", None, stream=stream, lean=lean).to(device).train()
                    record(_variant(arch, stream, lean), "backbone-variant", m,
                           lambda m=m: m(x), amp, arch=arch, mode="reversible", stream=stream, lean=lean)
                    del m
            if have_mm and not args.no_necks:
                for neck in ("RevBiFPNNeck", "HRFPN"):
                    m = build_revbifpn(arch, "reversible", neck).to(device).train()
                    record(f"revbifpn_{arch}_reversible+{neck}", "backbone+neck", m, lambda m=m: m(x), amp,
                           arch=arch, mode="reversible", neck=neck)
                    del m
        for name in baselines:
            m, src = build_baseline(name)
            if m is None:
                log(f"[benchmark] {name}: neither mmdet nor timm installed; skipped")
                continue
            m = m.to(device)
            m.train()  # (mmdet's HRNet.train returns None)
            record(f"{src}_{name}", "baseline", m, lambda m=m: m(x), amp)
            del m
    if have_mm and not args.no_detectors:
        for kind in ("faster", "mask"):
            for bb in ("revbifpn_s3",) + (() if args.no_lean else ("revbifpn_s3_lean",)) + ("hrnetv2p_w18", "r101_fpn"):
                model = build_detector(kind, bb).to(device)
                model.train()
                run = detector_runner(model, B, H, W, device, kind == "mask")
                record(f"{kind}_rcnn_{bb}", "detector", model, run, "fp32", detector=kind, backbone=bb)
                del model
    if not args.no_sweep:
        sh, sw, sb = (128, 128, 1) if args.quick else (512, 512, 4 if not cpu else 1)
        xs = torch.randn(sb, 3, sh, sw, device=device)
        for ext in (2, 4, 8, 16):
            for mode in ("reversible", "plain"):
                m = build_revbifpn("s0", mode, None, ext).to(device).train()
                params = list(m.parameters())
                log(f"[benchmark] sweep s0 ext={ext} {mode} ...")
                r = measure(lambda m=m: m(xs), params, device, sb, "fp32", warmup, steps, timed, peak_rss)
                rows.append(dict(name=f"sweep_s0_ext{ext}_{mode}", group="depth_sweep", amp="fp32", ext=ext,
                                 mode=mode, params_m=sum(p.numel() for p in params) / 1e6, input=[sb, 3, sh, sw], **r))
                del m

    meta = dict(device=str(device), device_name=torch.cuda.get_device_name(device) if not cpu else "cpu",
                torch=torch.__version__, input=[B, 3, H, W], warmup=warmup, steps=steps,
                memory=("cuda max_memory_allocated - baseline" if not cpu else
                        "bytes saved for backward (dedup by storage, params excluded)"),
                peak=("peak RSS of one step - RSS before it (glibc mmap threshold 64 KiB)"
                      if peak_rss else None),
                threads=torch.get_num_threads(), quick=args.quick)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1, default=float)
    md = render_markdown(meta, rows)
    with open(os.path.join(args.out, "benchmark.md"), "w") as f:
        f.write(md)
    plot(rows, os.path.join(args.out, "benchmark.png"), meta)
    print(md)
    return 0


_LEAN_SUFFIX = {"neck": "", "all": "_lean", "none": "_nolean"}


def _variant(arch: str, stream: str, lean: str = "neck") -> str:
    """Row name of a reversible backbone with ``stream`` residual streams (float64 is the plain
    name) and ``lean_recompute=lean`` (the default ``'neck'`` has no suffix)."""
    return (f"revbifpn_{arch}_reversible" + ("" if stream == "float64" else f"_{stream}streams")
            + _LEAN_SUFFIX[lean])


def _ratio(rows, a: str, b: str, key: str, amp: str = "fp32") -> Optional[float]:
    ra = next((r for r in rows if r["name"] == a and r["amp"] == amp), None)
    rb = next((r for r in rows if r["name"] == b and r["amp"] == amp), None)
    if not ra or not rb or not rb.get(key) or key not in ra or math.isnan(rb[key]) or math.isnan(ra[key]):
        return None
    return ra[key] / rb[key]


def render_markdown(meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    out = [f"Device: {meta['device_name']} · torch {meta['torch']} · input {meta['input']} · "
           f"memory = {meta['memory']}", "",
           "| model | group | amp | params (M) | act. memory GB/sample | step s |", "|---|---|---|---|---|---|"]
    if meta.get("peak"):
        out[0] += f"; peak = {meta['peak']}"
        out[2] = out[2].replace("| step s |", "| peak GB/sample | step s |")
        out[3] += "---|"
    for r in rows:
        peak = f"{r['peak_gb_per_sample']:.4f} | " if meta.get("peak") else ""
        out.append(f"| {r['name']} | {r['group']} | {r['amp']} | {r['params_m']:.3f} | "
                   f"{r['mem_gb_per_sample']:.4f} | {peak}{r['step_s']:.3f} |")
    out.append("")
    lines = []
    for amp in sorted({r["amp"] for r in rows}):
        for arch in ARCH_SETTINGS:
            mem = _ratio(rows, f"revbifpn_{arch}_plain", f"revbifpn_{arch}_reversible", "mem_gb_per_sample", amp)
            t = _ratio(rows, f"revbifpn_{arch}_reversible", f"revbifpn_{arch}_plain", "step_s", amp)
            if mem is not None:
                lines.append(f"- {arch} {amp}: plain/reversible memory {mem:.1f}x; reversible/plain step time "
                             f"{t:.2f}x" if t else f"- {arch} {amp}: plain/reversible memory {mem:.1f}x")
            pk = _ratio(rows, f"revbifpn_{arch}_plain", f"revbifpn_{arch}_reversible", "peak_gb_per_sample", amp)
            if pk is not None:
                lines.append(f"- {arch} {amp}: plain/reversible peak working set {pk:.1f}x")
            for stream in ("float32", "float64"):
                for key, what in (("mem_gb_per_sample", "memory"), ("peak_gb_per_sample", "peak"),
                                  ("step_s", "step time")):
                    for lean in ("all", "none"):
                        r = _ratio(rows, _variant(arch, stream, lean), _variant(arch, stream), key, amp)
                        if r is not None:
                            lines.append(f"- {arch} {amp} {stream} streams: lean_recompute='{lean}' / "
                                         f"default ('neck') {what} {r:.2f}x")
        neck = _ratio(rows, "revbifpn_s3_reversible+RevBiFPNNeck", "revbifpn_s3_reversible+HRFPN",
                      "mem_gb_per_sample", amp)
        if neck is not None:
            lines.append(f"- s3 {amp}: backbone+RevBiFPNNeck / backbone+HRFPN memory {neck:.2f}x")
    for kind in ("faster", "mask"):
        for ours in ("revbifpn_s3", "revbifpn_s3_lean"):
            label = "RevBiFPN-S3" + (" (lean_recompute='all')" if ours.endswith("_lean") else "")
            for key, what in (("mem_gb_per_sample", "memory"), ("peak_gb_per_sample", "peak working set")):
                r = _ratio(rows, f"{kind}_rcnn_hrnetv2p_w18", f"{kind}_rcnn_{ours}", key)
                if r is not None:
                    lines.append(f"- {kind.title()} R-CNN: HRNetV2p-W18 / {label} {what} {r:.2f}x")
    sweep = {(r["ext"], r["mode"]): r for r in rows if r["group"] == "depth_sweep"}
    if (2, "reversible") in sweep and (16, "reversible") in sweep:
        g = sweep[16, "reversible"]["saved_bytes"] / sweep[2, "reversible"]["saved_bytes"] - 1
        gp = sweep[16, "plain"]["saved_bytes"] / sweep[2, "plain"]["saved_bytes"] - 1
        lines.append(f"- depth sweep 2 -> 16 extension layers: reversible memory {100 * g:+.1f} %, "
                     f"plain {100 * gp:+.1f} %")
        if all("peak_gb_per_sample" in sweep[e, m] for e in (2, 16) for m in ("reversible", "plain")):
            g, gp = (sweep[16, m]["peak_gb_per_sample"] / sweep[2, m]["peak_gb_per_sample"] - 1
                     for m in ("reversible", "plain"))
            lines.append(f"- depth sweep 2 -> 16 extension layers: reversible peak working set {100 * g:+.1f} %, "
                         f"plain {100 * gp:+.1f} %")
    return "\n".join(out + ["Ratios (measured side by side in this run):"] + lines) + "\n"


def plot(rows: List[Dict[str, Any]], path: str, meta: Dict[str, Any]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("[benchmark] matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for group, mode, style in (("backbone", "reversible", "o-"), ("backbone", "plain", "s--")):
        pts = sorted((r["params_m"], r["mem_gb_per_sample"]) for r in rows
                     if r["group"] == group and r.get("mode") == mode and r["amp"] == "fp32")
        if pts:
            ax.plot(*zip(*pts), style, label=f"RevBiFPN {mode}")
    base = [r for r in rows if r["group"] == "baseline" and r["amp"] == "fp32"]
    for r in base:
        ax.plot(r["params_m"], r["mem_gb_per_sample"], "^", label=r["name"])
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("activation memory per sample (GB)")
    ax.set_yscale("log")
    ax.set_title(f"backbones, input {meta['input'][2]}x{meta['input'][3]}")
    ax.legend(fontsize=7)
    ax = axes[1]
    for mode, style in (("reversible", "o-"), ("plain", "s--")):
        pts = sorted((r["ext"], r["mem_gb_per_sample"]) for r in rows if r["group"] == "depth_sweep" and r["mode"] == mode)
        if pts:
            ax.plot(*zip(*pts), style, label=f"S0 width, {mode}")
    ax.set_xlabel("extension layers")
    ax.set_ylabel("activation memory per sample (GB)")
    ax.set_title("depth sweep")
    ax.legend(fontsize=7)
    fig.suptitle(f"{meta['device_name']} ({meta['memory']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
