"""`import revbifpn_mm`, the core and the models work with the mm stack blocked."""
import subprocess
import sys

CODE = """
import sys
for name in ('mmengine', 'mmcv', 'mmdet', 'mmseg'):
    sys.modules[name] = None  # any import of these now raises ImportError
import revbifpn_mm, revbifpn_mm.core, revbifpn_mm.models
import torch
m = revbifpn_mm.models.revbifpn_s0(num_classes=0).train()
feats = m(torch.randn(1, 3, 64, 64))
sum(f.sum() for f in feats).backward()
assert not any(k.split('.')[0] in ('mmengine', 'mmcv', 'mmdet', 'mmseg') and v is not None
               for k, v in sys.modules.items())
print('OK')
"""


def test_core_and_models_import_without_mm_stack():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")


def test_core_and_models_do_not_import_mm_modules():
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / "revbifpn_mm"
    for sub in ("core", "models"):
        for f in (root / sub).rglob("*.py"):
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for n in names:
                    assert n.split(".")[0] not in ("mmengine", "mmcv", "mmdet", "mmseg"), f"{f}: {n}"
                assert not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print"), f"print in {f}"
