"""The torch floor: an older torch gets one clear ImportError at ``import revbifpn_mm``.

Other torch releases are multi-GB downloads, so the version is faked.
"""
import pathlib
import re
import subprocess
import sys

import pytest

from revbifpn_mm._compat_torch import check_torch_version


@pytest.mark.parametrize("version", ["2.5.0", "2.5.1+cu124", "2.10.0", "2.13.0+cpu", "3.0.0", "custom"])
def test_supported_torch_versions_pass(version):
    check_torch_version(version)


@pytest.mark.parametrize("version", ["2.4.1", "2.1.0+cu121", "1.13.1"])
def test_older_torch_versions_fail_with_the_fix(version):
    with pytest.raises(ImportError, match=rf"torch >= 2\.5.*torch {re.escape(version)}.*pip install 'torch>=2\.5'"):
        check_torch_version(version)


def test_import_with_an_older_torch_fails_once_and_clearly():
    code = ("import torch\ntorch.__version__ = '2.4.1+cu121'\n"
            "try:\n    import revbifpn_mm\nexcept ImportError as e:\n    print('ERR', e)\nelse:\n    print('IMPORTED')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(pathlib.Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERR revbifpn_mm needs torch >= 2.5, but torch 2.4.1+cu121 is installed"), out.stdout
    assert "pip install 'torch>=2.5'" in out.stdout
