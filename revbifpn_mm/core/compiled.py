"""Transforms run through ``torch.compile``, one compiled function per distinct block signature.

The reversible container stays eager (its autograd Function recomputes and calls
``torch.autograd.grad`` in its backward, which Dynamo cannot trace); what it calls, each
transform ``T(x)`` in the forward and in the backward's recomputation, runs compiled when
:attr:`~revbifpn_mm.core.RunPolicy.compile_transforms` is on.

Caching: Dynamo keeps its compiled graphs on the *code object* it traced, and allows a few
(``recompile_limit``, 8) per code object. All MBConvs share one ``forward`` code object, so
compiling it per module exhausts that limit within one step. Here every distinct block signature
(``repr`` of the module, which names its layers, channels, kernel sizes, strides, eps and
momentum, plus its parameters' dtypes and devices) gets its own code object, a copy of
:func:`_call`, compiled with Dynamo's automatic dynamic shapes (static first; a size that changes turns
dynamic, so a detector's next padded sizes reuse that graph: ``dynamic=True`` from the start met an
inductor code-generation failure in an SE backward); the module is an *argument*, so its
parameters and buffers are graph inputs and every block of that signature shares the graphs.
What still tells graphs apart are Dynamo's guards: grad mode (the no-grad forward vs the
recomputation), training flags and ``track_running_stats`` (the container freezes BN running
statistics during the recomputation by clearing that flag, so that graph does not update them),
the 0/1 specialisation of sizes and storage offsets, and a size turning dynamic: more than Dynamo's
default limit of 8 per signature, so :data:`RECOMPILE_LIMIT` raises it (see :func:`_configure`).

Failure: if ``torch.compile`` is unavailable or a compilation fails, one warning says why and
every transform runs eager from then on (the process never crashes on it); a module's own error
(wrong input, out of memory) is raised as eager raises it and does not turn compilation off.
"""
from __future__ import annotations

import types
import warnings
import weakref
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["compiled_call", "compile_failure", "reset_compiled", "BACKEND"]

#: The ``torch.compile`` backend. ``'inductor'`` fuses (the point of the option); the tests also run
#: ``'aot_eager'`` (Dynamo and AOTAutograd without code generation: the same graphs, guards and
#: BN-statistics handling in seconds instead of minutes).
BACKEND = "inductor"
#: Graphs one signature may hold (Dynamo's default, 8, per code object): grad mode (forward /
#: recomputation) x BN tracking x the 0/1 specialisation of sizes and storage offsets (a channel half
#: at offset 0 or not) x a size that turned dynamic reach 8 on RevBiFPN; past the limit Dynamo runs
#: the signature eager.
RECOMPILE_LIMIT = 32

_Fn = Callable[[nn.Module, Tensor], Tensor]
_by_signature: Dict[str, _Fn] = {}
_by_module: "weakref.WeakKeyDictionary[nn.Module, _Fn]" = weakref.WeakKeyDictionary()
_failure: Optional[str] = None


def _call(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


def _signature(module: nn.Module) -> str:
    """What makes two blocks compile to the same graphs: their structure and parameter dtypes/devices."""
    tensors = [t for t in module.state_dict(keep_vars=True).values()]
    return repr(module) + repr(sorted({(str(t.dtype), str(t.device)) for t in tensors}))


def _compiled_for(module: nn.Module) -> _Fn:
    fn = _by_module.get(module)
    if fn is None:
        key = _signature(module)
        fn = _by_signature.get(key)
        if fn is None:
            _configure()
            code = _call.__code__.replace(co_name=f"transform_{len(_by_signature)}")  # a code object of its own
            fn = torch.compile(types.FunctionType(code, _call.__globals__, code.co_name), backend=BACKEND)
            _by_signature[key] = fn
        _by_module[module] = fn
    return fn


def _configure() -> None:
    """Compiler settings the compiled transforms need, set once for the process when the first one is
    compiled (a scoped ``config.patch`` around every call cost about 0.5 ms a call here): the backward
    graph is compiled with the forward (``force_non_lazy_backward_lowering``: not lazily inside
    ``autograd.grad``, where a failure could not fall back; for other compiled code in the process this
    moves its backward compilation earlier, nothing else), and Dynamo's ``recompile_limit`` is raised to
    at least :data:`RECOMPILE_LIMIT` (never lowered)."""
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config
    functorch_config.force_non_lazy_backward_lowering = True
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)


def compiled_call(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, compiled (shared with every block of the same signature); eager after a failure.

    A compiler failure (``torch.compile`` unavailable here, or a Dynamo / AOTAutograd / backend error:
    ``torch._dynamo.exc.TorchDynamoException``) runs the call eager; if that succeeds, the failure was
    the compiler's: one warning with its reason, and compilation stays off for the process. If the
    eager call raises too, the error is the module's own (a wrong input, out of memory): it propagates
    as eager raises it and compilation stays on. Any other exception propagates untouched.
    """
    if _failure is not None:
        return module(x)
    try:
        fn = _compiled_for(module)
    except Exception as e:  # noqa: BLE001: torch.compile refuses this platform or Python in its own types
        return _fall_back(e, module, x)
    try:
        return fn(module, x)
    except _compiler_errors() as e:
        return _fall_back(e, module, x)


def _compiler_errors() -> tuple:
    from torch._dynamo.exc import TorchDynamoException  # BackendCompilerFailed, InductorError, ... derive from it
    return (TorchDynamoException,)


def _fall_back(error: Exception, module: nn.Module, x: Tensor) -> Tensor:
    """Run eager; only when that works is ``error`` the compiler's: warn once and stop compiling."""
    global _failure
    y = module(x)
    text = str(error).strip()
    _failure = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    warnings.warn(f"compile_transforms: torch.compile failed ({_failure}); the transforms run eager "
                  "from now on", RuntimeWarning, stacklevel=3)
    return y


def compile_failure() -> Optional[str]:
    """Why compilation was turned off (None while it works)."""
    return _failure


def reset_compiled() -> None:
    """Forget every compiled function and a recorded failure (tests; a new compiler setting)."""
    global _failure
    _by_signature.clear()
    _by_module.clear()
    _failure = None
