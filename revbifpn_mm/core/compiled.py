"""Transforms run through ``torch.compile`` (``RunPolicy.compile_transforms``), one compiled function per block
signature (the module's ``repr`` plus its parameters' dtypes and devices): Dynamo keeps at most
``recompile_limit`` graphs per *code object* and all MBConvs share one ``forward``, so each signature gets a copy
of :func:`_call` of its own, with the module as an argument. Shapes start static (``dynamic=True`` met an
inductor failure in an SE backward). A compiler failure warns once, then all runs eager. See docs/design.md.
"""
from __future__ import annotations

import types
import warnings
import weakref
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["compiled_call", "compile_failure", "reset_compiled", "BACKEND"]

#: The ``torch.compile`` backend; the tests also run ``'aot_eager'`` (the same graphs, without code generation).
BACKEND = "inductor"
#: Graphs one signature may hold (Dynamo's default is 8): grad mode x BN tracking x the 0/1 specialisation of
#: sizes and storage offsets x a size turned dynamic reach 8 on RevBiFPN; past the limit Dynamo runs eager.
RECOMPILE_LIMIT = 32

_Fn = Callable[[nn.Module, Tensor], Tensor]
_by_signature: Dict[str, _Fn] = {}
_by_module: "weakref.WeakKeyDictionary[nn.Module, _Fn]" = weakref.WeakKeyDictionary()
_failure: Optional[str] = None


def _call(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


def _signature(module: nn.Module) -> str:
    """What makes two blocks compile to the same graphs: their structure and parameter dtypes/devices."""
    tensors = module.state_dict(keep_vars=True).values()
    return repr(module) + repr(sorted({(str(t.dtype), str(t.device)) for t in tensors}))


def _compiled_for(module: nn.Module) -> _Fn:
    fn = _by_module.get(module)
    if fn is None:
        key = _signature(module)
        fn = _by_signature.get(key)
        if fn is None:
            import torch._dynamo.config as dynamo_config
            import torch._functorch.config as functorch_config
            # Set for the process (a scoped patch per call cost 0.5 ms): the backward graph compiles with the
            # forward, not lazily inside ``autograd.grad`` where a failure could not fall back.
            functorch_config.force_non_lazy_backward_lowering = True
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
            code = _call.__code__.replace(co_name=f"transform_{len(_by_signature)}")  # a code object of its own
            fn = torch.compile(types.FunctionType(code, _call.__globals__, code.co_name), backend=BACKEND)
            _by_signature[key] = fn
        _by_module[module] = fn
    return fn


def compiled_call(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, compiled (shared with every block of the same signature); eager after a failure.

    A compiler failure (``torch.compile`` unavailable here, or a ``TorchDynamoException``) runs the call eager;
    if that succeeds, one warning gives the reason and compilation stays off for the process. If the eager
    call raises too, the error is the module's own (a wrong input, out of memory): it propagates as eager
    raises it and compilation stays on. Any other exception propagates untouched.
    """
    if _failure is not None:
        return module(x)
    try:
        fn = _compiled_for(module)
    except Exception as e:  # noqa: BLE001: torch.compile refuses this platform or Python in its own types
        return _fall_back(e, module, x)
    from torch._dynamo.exc import TorchDynamoException  # BackendCompilerFailed, InductorError, ... derive from it
    try:
        return fn(module, x)
    except TorchDynamoException as e:
        return _fall_back(e, module, x)


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
