"""revbifpn_mm.tooling.memory: the CPU peak working set probe used by the memory tests and benchmarks."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from revbifpn_mm.tooling.memory import peak_rss_supported

ROOT = pathlib.Path(__file__).resolve().parents[2]

CODE = """
import json
from revbifpn_mm.tooling import memory
res = {}
try:
    memory.peak_rss_bytes(lambda: None)
except RuntimeError as err:
    res["not_enabled"] = str(err)
res["enabled"] = memory.enable_peak_rss()
import numpy as np
n = 64 * 2 ** 20

def spike():  # 64 MiB touched, then freed: only the peak sees it
    a = np.ones(n, dtype=np.uint8)
    del a

res["spike"] = memory.peak_rss_bytes(spike)
res["idle"] = memory.peak_rss_bytes(lambda: None)
print(json.dumps(res))
"""


@pytest.mark.skipif(not peak_rss_supported(), reason="peak working set readings need Linux /proc (clear_refs)")
def test_peak_rss_sees_a_freed_allocation():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "enable_peak_rss()" in res["not_enabled"]  # refuses to read before the allocator is pinned
    assert res["enabled"] is True
    mib = 2 ** 20
    assert 62 * mib <= res["spike"] <= 72 * mib, res["spike"]  # the 64 MiB array, give or take a few pages
    assert res["idle"] <= 4 * mib, res["idle"]  # the reading resets: the earlier spike is gone
