"""Importing this makes ``compile_transforms`` use the ``aot_eager`` backend (Dynamo and AOTAutograd, the
same graphs and guards without code generation: seconds instead of minutes) and, at exit, writes what
compiled to ``$COMPILE_REPORT.<rank>``; for torchrun workers (``custom_imports``)."""
import atexit
import json
import os

from revbifpn_mm.core import compiled

compiled.BACKEND = "aot_eager"


@atexit.register
def _report() -> None:
    path = os.environ.get("COMPILE_REPORT")
    if path:
        with open(f"{path}.{os.environ.get('RANK', '0')}", "w") as f:
            json.dump({"signatures": len(compiled._by_signature), "failure": compiled.compile_failure()}, f)
