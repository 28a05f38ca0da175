"""The benchmark behind ``tools/benchmark_memory.py``: one module per suite, each returning its cases or
rows (``backbones``, ``fair_fight``, ``seg``, ``depth``, ``kernels``, ``throughput``), the passes that
measure cases (:mod:`.measure`), the models they build (:mod:`.models`) and the report (:mod:`.report`)."""
import argparse
import sys


class _Renamed(argparse.Action):
    """An option's earlier spelling: stores into the new option and says so on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        print(f"warning: {option_string} is now called {self.const}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(ap: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` as a deprecated spelling of the option ``new`` (hidden from --help)."""
    ap.add_argument(old, dest=new.lstrip("-").replace("-", "_"), action=_Renamed, const=new, help=argparse.SUPPRESS)
