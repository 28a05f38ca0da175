"""GPU checks in one short script (run on a lent CUDA machine; prints figures, writes JSON).

1. CUDA RNG replay: reversible vs plain gradients with stochastic depth active (float64).
2. Mixed precision training steps without NaN: bf16 autocast, fp16 autocast + GradScaler
   (what mmengine's AmpOptimWrapper does), reversible vs plain gradient cosine.
3. Reversible overhead/memory micro-figures are left to tools/benchmark_memory.py and the
   fidelity table to tools/fidelity.py (both are called by the device command).

    python tools/device_checks.py --out OUT_DIR
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

from revbifpn_mm.models import RevBiFPN


def rng_replay(device: torch.device) -> dict:
    torch.manual_seed(0)
    rev = RevBiFPN("s0", num_classes=0, drop_path_rate=0.5).to(device).double().train()
    plain = copy.deepcopy(rev)
    plain.set_memory_mode("plain")
    x = torch.randn(2, 3, 128, 128, device=device, dtype=torch.float64)
    gs = []
    for m in (rev, plain):
        torch.manual_seed(7)  # seeds CPU and CUDA generators
        a = m(x)
        b = m(x)  # two forwards before one backward: each call replays its own masks
        (sum(f.sum() for f in a) + 2 * sum(f.sum() for f in b)).backward()
        gs.append([p.grad for p in m.parameters()])
    gmax = max(g.abs().max().item() for g in gs[1])
    err = max((p - q).abs().max().item() for p, q in zip(*gs)) / gmax
    return dict(check=f"{device.type}_rng_replay_fp64", max_rel=err, ok=err < 1e-9)


def amp_steps(device: torch.device, arch: str, size: int = 256) -> dict:
    out = dict(check=f"amp_{arch}")
    torch.manual_seed(0)
    base = RevBiFPN(arch, num_classes=0).to(device).train()
    x = torch.randn(2, 3, size, size, device=device)
    w = [torch.randn_like(f) for f in base.eval()(x)]
    base.train()
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        grads = []
        for mode in ("reversible", "plain"):
            m = copy.deepcopy(base)
            m.set_memory_mode(mode)
            opt = torch.optim.SGD(m.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            finite = True
            torch.manual_seed(1)  # same stochastic-depth masks for both memory modes
            for step in range(3):
                opt.zero_grad()
                with torch.autocast(device.type, dtype=dtype):
                    feats = m(x)
                loss = sum((f.float() * wi).mean() for f, wi in zip(feats, w))
                scaler.scale(loss).backward()
                if step == 0:
                    grads.append(torch.cat([p.grad.flatten().double() / scaler.get_scale() for p in m.parameters()]))
                finite &= bool(torch.isfinite(loss).item())
                scaler.step(opt)
                scaler.update()
            out[f"{name}_{mode}_finite"] = finite
        cos = (grads[0] @ grads[1] / (grads[0].norm() * grads[1].norm())).item()
        out[f"{name}_cos_rev_plain"] = cos
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="work_dirs/device")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    res = dict(device=name, torch=torch.__version__, checks=[])
    for fn in (lambda: rng_replay(dev), lambda: amp_steps(dev, "s0", args.size),
               lambda: amp_steps(dev, "s3", args.size)):
        r = fn()
        res["checks"].append(r)
        print(json.dumps(r), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "device_checks.json"), "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
