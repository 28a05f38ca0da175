"""`import revbifpn_mm` works wherever torch does; the mm layer needs only what it uses.

Each case runs in a fresh interpreter with part of the OpenMMLab stack blocked
(``sys.modules[name] = None`` makes every import of ``name`` raise ImportError).
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MM_STACK = importlib.util.find_spec("mmengine") is not None and importlib.util.find_spec("mmcv") is not None
needs_mmcv = pytest.mark.skipif(not MM_STACK, reason="mmengine + mmcv not installed")

TORCH_ONLY_RUN = """
import torch, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import revbifpn_mm, revbifpn_mm.core, revbifpn_mm.models
print('OWN_WARNINGS', [str(w.message) for w in caught if 'revbifpn_mm' in str(w.message)])
m = revbifpn_mm.models.revbifpn_s0(num_classes=0).train()
sum(f.sum() for f in m(torch.randn(1, 3, 64, 64))).backward()
print('TORCH_ONLY_OK')
"""


def run(code, env=None):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(REPO), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def block(*names):
    return "import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in names)


EXPLICIT_MM_IMPORT = """
try:
    import revbifpn_mm.mm
except ImportError as e:
    print('MM_ERR', e)
else:
    print('MM_IMPORTED')
"""


def test_mmcv_missing():
    """mmengine present, mmcv absent: the torch layers work, the mm layer is simply not registered."""
    out = run(block("mmcv") + TORCH_ONLY_RUN
              + "assert 'revbifpn_mm.mm' not in sys.modules\n" + EXPLICIT_MM_IMPORT)
    assert "TORCH_ONLY_OK" in out and "OWN_WARNINGS []" in out, out
    assert "MM_ERR revbifpn_mm.mm needs mmcv 2.1.0 (mmcv.cnn)" in out, out
    assert "tools/setup_env.sh" in out and "MMCV_WITH_OPS=1" in out


def test_mmengine_missing():
    out = run(block("mmengine") + TORCH_ONLY_RUN
              + "assert 'revbifpn_mm.mm' not in sys.modules\n" + EXPLICIT_MM_IMPORT)
    assert "TORCH_ONLY_OK" in out and "OWN_WARNINGS []" in out, out
    assert "MM_ERR revbifpn_mm.mm needs mmengine" in out, out
    assert "pip install 'mmengine==0.10.7'" in out


@needs_mmcv
def test_mmcv_without_compiled_ops_registers_and_checks_where_ops_are_used():
    """mmcv-lite / mmcv without ``_ext``: the mm layer registers and builds; the ops check says what is missing."""
    out = run(block("mmcv._ext") + TORCH_ONLY_RUN + """
from mmengine.registry import MODELS
import torch
b = MODELS.build(dict(type='RevBiFPN', arch='s0'))
n = MODELS.build(dict(type='RevBiFPNNeck', in_channels=list(b.out_channels)))
print('FEATS', len(n(b(torch.randn(1, 3, 64, 64)))))
from revbifpn_mm.mm import MMCVOpsMissingError, check_mmcv_ops
try:
    check_mmcv_ops()
except MMCVOpsMissingError as e:
    print('OPS_ERR', e)
""")
    assert "TORCH_ONLY_OK" in out and "OWN_WARNINGS []" in out and "FEATS 5" in out, out
    assert "OPS_ERR mmcv 2.1.0 is installed without its compiled ops" in out, out
    assert "tools/setup_env.sh" in out


@needs_mmcv
def test_custom_imports_registers_the_mm_layer():
    """``custom_imports=dict(imports=['revbifpn_mm'])`` in a full environment registers both modules
    and the weights-only allow-list for mmengine checkpoints."""
    out = run("""
from mmengine.config import Config
from mmengine.registry import MODELS
import importlib
cfg = Config(dict(custom_imports=dict(imports=['revbifpn_mm'], allow_failed_imports=False)))
for name in cfg.custom_imports['imports']:
    importlib.import_module(name)
assert MODELS.get('RevBiFPN') is not None and MODELS.get('RevBiFPNNeck') is not None
import torch
from mmengine.logging.history_buffer import HistoryBuffer
assert HistoryBuffer in torch.serialization.get_safe_globals()
print('REGISTERED')
""")
    assert "REGISTERED" in out


@needs_mmcv
@pytest.mark.parametrize("tool,args", [
    ("train.py", [str(REPO / "configs" / "faster_rcnn_revbifpn_s0.py")]),
    ("test.py", [str(REPO / "configs" / "faster_rcnn_revbifpn_s0.py"), "missing.pth"]),
    ("quickstart.py", []),
])
def test_tools_preflight_names_missing_compiled_ops(tool, args, tmp_path):
    """The tools check mmcv's ops before building anything: exit 2 and one clear line, no trace."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['mmcv._ext'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path), env=env)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert "ERROR: mmcv 2.1.0 is installed without its compiled ops" in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr


@needs_mmcv
def test_ops_that_do_not_run_on_the_device_are_named():
    """An mmcv whose ops lack the run's device (a CUDA torch, mmcv built without nvcc) fails the check
    at once, with the fix; simulated by ops that raise mmcv's own error for a missing device kernel."""
    out = run("""
import mmcv.ops
def missing(*a, **k):
    raise RuntimeError("nms_impl: implementation for device cuda:0 not found.")
mmcv.ops.nms = missing
from revbifpn_mm.mm import MMCVOpsMissingError, check_mmcv_ops
try:
    check_mmcv_ops('cpu')
except MMCVOpsMissingError as e:
    print('OPS_ERR', e)
""")
    assert "OPS_ERR mmcv 2.1.0's compiled ops do not run on cpu" in out, out
    assert "tools/setup_env.sh --rebuild-mmcv" in out


MMSEG_WARNINGS = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import revbifpn_mm.mm
from mmengine.registry import MODELS
print('MMSEG_WARNINGS', [str(w.message) for w in caught if 'mmseg' in str(w.message)])
print('HEAD', MODELS.get('LeanFCNHead') is not None)
"""


@needs_mmcv
def test_a_broken_mmseg_warns_an_absent_one_does_not():
    """mmseg absent: the lean head is simply not registered; mmseg installed but failing to import
    (here its models blocked): a warning says so and names the fix."""
    absent = run(block("mmseg") + MMSEG_WARNINGS)
    assert "MMSEG_WARNINGS []" in absent and "HEAD False" in absent, absent
    broken = run(block("mmseg.models") + MMSEG_WARNINGS)
    assert "mmseg is installed but does not import" in broken and "HEAD False" in broken, broken
    assert "tools/setup_env.sh" in broken, broken
