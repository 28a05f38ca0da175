"""The benchmark behind ``tools/benchmark_memory.py``: one module per suite, each returning its cases or
rows (``backbones``, ``fair_fight``, ``seg``, ``depth``, ``kernels``, ``throughput``), the passes that
measure cases (:mod:`.measure`), the models they build (:mod:`.models`) and the report (:mod:`.report`)."""
