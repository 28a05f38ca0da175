"""Install revbifpn_mm (``pip install -e .``): the core and the models need only torch; the ``mm`` extra is
the OpenMMLab stack of ``requirements/mm.txt`` (mmcv's compiled ops come from ``tools/setup_env.sh``).
"""
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version: dict = {}
with open(os.path.join(here, "revbifpn_mm", "version.py")) as f:
    exec(f.read(), version)


def requirements(name: str) -> list:
    """The requirement lines of ``requirements/<name>.txt`` (comments and blank lines dropped)."""
    with open(os.path.join(here, "requirements", f"{name}.txt")) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


setup(
    name="revbifpn_mm",
    version=version["__version__"],
    description="RevBiFPN: a reversible multi-scale backbone for MMDetection 3.x and MMSegmentation 1.x",
    long_description=open(os.path.join(here, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["revbifpn_mm", "revbifpn_mm.*"]),
    install_requires=["torch>=2.5", "numpy"],
    extras_require={"mm": requirements("mm"), "tests": requirements("tools")},
    license="BSD-3-Clause",
)
