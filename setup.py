"""Install revbifpn_mm (``pip install -e .``).

The core and the models need only torch. The OpenMMLab stack (mmengine, mmcv with
compiled ops, mmdet, mmsegmentation) is set up by ``tools/setup_env.sh`` because
mmcv 2.1.0 has no wheels on PyPI and must be built from source once per machine.
"""
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version: dict = {}
with open(os.path.join(here, "revbifpn_mm", "version.py")) as f:
    exec(f.read(), version)

setup(
    name="revbifpn_mm",
    version=version["__version__"],
    description="RevBiFPN: a reversible multi-scale backbone for MMDetection 3.x and MMSegmentation 1.x",
    long_description=open(os.path.join(here, "README.md")).read() if os.path.exists(os.path.join(here, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["revbifpn_mm", "revbifpn_mm.*"]),
    install_requires=["torch>=2.5", "numpy"],
    extras_require={
        "mm": ["mmengine==0.10.7", "mmdet==3.3.0", "mmsegmentation==1.2.2", "pycocotools",
               "setuptools<82"],
        "tests": ["pytest"],
    },
    license="BSD-3-Clause",
)
