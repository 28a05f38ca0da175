"""The benchmark's files and tables: ``<out>/{peak,time}.json`` per pass (keeping earlier runs' rows of other
``(name, amp)`` keys, so a suite can run in parts), merged into ``benchmark.json``, ``.md`` and ``.png``."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from .measure import merge_rows

AP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coco_ap.json")
with open(AP_FILE, encoding="utf-8") as _f:
    COCO_AP: Dict[str, Any] = json.load(_f)
NOTES = {
    "fair-fight": (COCO_AP["_about"] + " Not measured here. with_cp changes memory and time, not AP. Peak: the peak "
                   "probe on, one step per model; step time: a separate pass without the probe, all models stepped in "
                   "turn, minimum over the rounds."),
    "throughput": ("Largest batch whose training step (forward + backward, gradients allocated) fits the cap, and "
                   "images per second at it. CUDA: the caching allocator is capped with "
                   "torch.cuda.set_per_process_memory_fraction; CPU: the peak resident set of the step, read in "
                   "a fresh process per batch (the planner's method), against the cap."),
}


def read_pass(out: str, name: str) -> Dict[str, Any]:
    """``{'meta': ..., 'rows': [...]}`` of ``<out>/<name>.json`` (empty when absent)."""
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        return dict(meta={}, rows=[])
    with open(path) as f:
        return json.load(f)


def write_pass(out: str, name: str, meta: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> None:
    """Write ``<out>/<name>.json``; rows of earlier runs with other ``(name, amp)`` keys stay."""
    kept = {(r["name"], r.get("amp", "fp32")): r for r in read_pass(out, name)["rows"]}
    kept.update({(r["name"], r.get("amp", "fp32")): r for r in rows})
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=list(kept.values())), f, indent=1, default=float)


def fmt(v: Any, spec: str = ".3f") -> str:
    """A table cell: numbers formatted, None / NaN empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


COLUMNS = [("batch", "batch", "d"), ("params (M)", "params_m", ".3f"),
           ("saved GB/sample", "saved_gb_per_sample", ".4f"), ("peak GB/sample", "peak_gb_per_sample", ".4f"),
           ("step s", "step_s", ".3f"), ("first step s", "first_step_s", ".1f"), ("images/s", "images_s", ".2f"),
           ("peak GB", "peak_gb", ".3f"), ("allocated GB", "allocated_gb", ".2f"),
           ("reserved GB", "reserved_gb", ".2f"), ("forward kernels", "kernels_fwd", "d"),
           ("backward kernels", "kernels_bwd", "d"), ("kernels", "kernels", "d")]


def table(meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> List[str]:
    """One line per row, with the columns any row has; a failed row says why."""
    cols = [c for c in COLUMNS if any(fmt(r.get(c[1])) for r in rows)]
    out = [f"Device: {meta.get('device_name', '?')} · torch {meta.get('torch', '?')} · input {meta.get('input', '?')}"
           f" · {meta.get('threads', '?')} threads · {meta.get('date', '')}", "",
           "| model | amp | " + " | ".join(c[0] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(k), f) for _, k, f in cols]
        if r.get("error") and cells:
            cells[-1] = (cells[-1] + " " if cells[-1] else "") + f"failed: {r['error']}"
        out.append(f"| {r['name']} | {r.get('amp', 'fp32')} | " + " | ".join(cells) + " |")
    return out + [""]


def ratios(rows: List[Dict[str, Any]]) -> List[str]:
    """Side-by-side ratios of rows that share a ``ref`` (e.g. reversible / plain of one arch)."""
    by_name = {(r["name"], r.get("amp", "fp32")): r for r in rows}
    lines = []
    for r in rows:
        ref = by_name.get((r.get("ref"), r.get("amp", "fp32")))
        if ref is None or r is ref:
            continue
        for key, what in (("peak_gb_per_sample", "peak"), ("saved_gb_per_sample", "saved"), ("step_s", "step time"),
                          ("kernels", "kernels")):
            a, b = r.get(key), ref.get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and not math.isnan(a * b):
                lines.append(f"- {r['name']} / {ref['name']} {what}: {a / b:.2f}x")
    return lines


def detector_tables(rows: List[Dict[str, Any]]) -> List[str]:
    """The detector comparison: quoted APs beside peak, saved, step time, kernels."""
    out = []
    for kind, title in (("faster", "Faster R-CNN"), ("mask", "Mask R-CNN")):
        det = [r for r in rows if r.get("detector") == kind]
        if not det:
            continue
        masks = kind == "mask"
        head = "box AP paper | box AP mmdet |" + (" mask AP paper | mask AP mmdet |" if masks else "")
        out += [f"**{title}**", "", f"| backbone | with_cp | amp | {head} peak GB/sample | saved GB/sample | step s |",
                "|---|---|---|" + "---|" * (head.count("|") + 3)]
        for r in det:
            bb = r["backbone"]
            quoted = [COCO_AP.get(kind, {}).get(bb, {}).get(s, [None, None])[i]  # box, mask AP of AP_FILE
                      for i in ((0, 1) if masks else (0,)) for s in ("paper", "mmdet")]
            aps = ["n/a" if v is None else f"{v:.1f}" for v in quoted]
            figs = ([fmt(r.get("peak_gb_per_sample")), fmt(r.get("saved_gb_per_sample")), fmt(r.get("step_s"), ".2f")]
                    if not r.get("error") else [f"failed: {r['error']}", "", ""])
            cp = "yes" if r.get("with_cp") else ("" if bb.startswith("revbifpn") else "no")
            out.append(f"| {bb}{' compiled' if r.get('compile_transforms') else ''} | {cp} | {r.get('amp', 'fp32')} | "
                       + " | ".join(aps + figs) + " |")
        out.append("")
    return out


def plot(rows: List[Dict[str, Any]], path: str, meta: Dict[str, Any]) -> None:
    """Memory against time per row, one marker and legend entry each (no overlapping labels)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    mem = next((k for k in ("peak_gb_per_sample", "allocated_gb", "saved_gb_per_sample")
                if any(isinstance(r.get(k), float) for r in rows)), None)
    speed = "images_s" if any(isinstance(r.get("images_s"), float) for r in rows) else "step_s"
    pts = [r for r in rows if isinstance(r.get(mem), float) and isinstance(r.get(speed), float)
           and not math.isnan(r[speed]) and not r.get("error")]
    if mem is None or not pts:
        return
    fig, ax = plt.subplots(figsize=(11, 5))
    markers = "o^sDvP*Xh<>p"
    for i, r in enumerate(pts):
        ax.plot(r[speed], r[mem], markers[i % len(markers)], markersize=8, color=plt.cm.tab20(i % 20),
                label=f"{r['name']} ({r.get('amp', 'fp32')}): {r[mem]:.3g}, {r[speed]:.3g}")
    ax.set_xlabel({"images_s": "images per second", "step_s": "step time (s)"}[speed])
    ax.set_ylabel(mem.replace("_", " "))
    ax.set_title(f"{meta.get('suite', '')}: {meta.get('device_name', '')}, input {meta.get('input', '')}", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: str, meta: Optional[Dict[str, Any]] = None) -> str:
    """Merge ``<out>/peak.json`` and ``<out>/time.json`` into ``benchmark.{json,md,png}``; return the markdown."""
    peak, time_ = read_pass(out, "peak"), read_pass(out, "time")
    rows = merge_rows(peak["rows"], time_["rows"])
    meta = dict(meta or peak["meta"] or time_["meta"])
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1, default=float)
    lines = detector_tables(rows) if meta.get("suite") == "fair-fight" else []
    lines += table(meta, rows)
    more = ratios(rows)
    lines += (["Ratios (measured side by side in this run):"] + more + [""]) if more else []
    if meta.get("suite") in NOTES:
        lines += [NOTES[meta["suite"]], ""]
    md = "\n".join(lines)
    with open(os.path.join(out, "benchmark.md"), "w") as f:
        f.write(md)
    plot(rows, os.path.join(out, "benchmark.png"), meta)
    return md
