"""``nn.Module`` forms of the loss functions, generated from the functions' signatures.

:func:`loss_module` builds the class of a loss function ``fn``: its constructor takes ``fn``'s keyword-only
options (with ``fn``'s defaults, in ``fn``'s order unless ``options`` gives another) and keeps each as an attribute
of the same name; ``forward`` takes ``fn``'s positional inputs, then the per-call arguments named in ``forward``
and ``overrides``, and calls ``fn`` with the stored options. So no signature is copied by hand, and a new option of
a loss reaches its module without an edit here.

* an unknown constructor or ``forward`` keyword raises ``TypeError`` naming it (``inspect.Signature.bind``);
* ``inspect.signature(Module)`` and ``help(Module)`` show the real arguments;
* ``buffers`` names tensor options kept as buffers (they follow ``.to(device)`` and the ``state_dict``); any
  ``nn.Parameter`` given as an option (e.g. a learnable temperature) is registered as a parameter by
  ``nn.Module`` itself;
* ``check(**options)`` validates the options at construction (a bad value raises there, not at the first step).

Losses whose module owns more than its function's options (learnable parameters created from the options, a
predictor network, a random generator) keep a hand-written class: ``SigLIP``, ``CPC``, ``SupReMix``,
``MeanShifted``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["loss_module"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def loss_module(
    fn: Callable,
    name: str,
    *,
    forward: Sequence[str] = (),
    overrides: Sequence[str] = (),
    options: Sequence[str] | None = None,
    buffers: Sequence[str] = (),
    check: Callable[..., None] | None = None,
    doc: str | None = None,
) -> type[nn.Module]:
    """The ``nn.Module`` class of the loss function ``fn`` (see the module doc).

    Args:
        fn: the loss; positional parameters are the tensors ``forward`` takes, keyword-only ones the options.
        name: the class name (also its ``__qualname__``; the class's module is ``fn``'s, so it pickles).
        forward: keyword-only arguments of ``fn`` given per call to ``forward`` only (required where ``fn`` requires
            them; otherwise default ``None``, which leaves them out of the call).
        overrides: options that ``forward`` may also take; a value other than ``None`` replaces the constructor's
            for that call (e.g. a (B,) ``temperature`` from :class:`core.losses.TemperatureNet`).
        options: the constructor's arguments in order (default: ``fn``'s keyword-only ones but ``forward``).
        buffers: options kept as buffers.
        check: called with every option at construction.
        doc: the class docstring (default: one naming ``fn`` and ``forward``'s arguments).
    """
    sig = inspect.signature(fn)
    params = sig.parameters
    kwonly = [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    inputs = [p for p in params.values() if p.kind in _POSITIONAL]
    for n in (*forward, *overrides, *(options or ())):
        if n not in kwonly:
            raise ValueError(f"{fn.__name__} has no keyword-only argument {n!r}")
    opts = tuple(options) if options is not None else tuple(n for n in kwonly if n not in forward)
    if set(opts) & set(forward):
        raise ValueError(f"{sorted(set(opts) & set(forward))} cannot be both options and per-call arguments")
    missing = [n for n in kwonly if n not in opts and n not in forward]
    if missing:
        raise ValueError(f"{fn.__name__}'s {missing} are neither options nor per-call arguments of {name}")

    P = inspect.Parameter
    self_param = P("self", P.POSITIONAL_OR_KEYWORD)
    init_sig = inspect.Signature(
        [self_param] + [P(n, P.POSITIONAL_OR_KEYWORD, default=params[n].default, annotation=params[n].annotation)
                        for n in opts])
    per_call = (*forward, *overrides)
    fwd_sig = inspect.Signature(
        [self_param] + [p.replace(kind=P.POSITIONAL_OR_KEYWORD) for p in inputs]
        + [P(n, P.POSITIONAL_OR_KEYWORD, annotation=_optional(params[n].annotation) if n in overrides
             else params[n].annotation, default=params[n].default if n in forward and params[n].default is P.empty
             else None)
           for n in per_call])
    n_inputs = len(inputs)
    buffer_names = frozenset(buffers)

    def bind(sig: inspect.Signature, where: str, *args, **kwargs) -> inspect.BoundArguments:
        try:
            return sig.bind(*args, **kwargs)
        except TypeError as err:  # name the class: "InfoNCE(): got an unexpected keyword argument 'temprature'"
            raise TypeError(f"{where}: {err}") from None

    def __init__(self, *args, **kwargs) -> None:
        bound = bind(init_sig, f"{name}()", self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        nn.Module.__init__(self)
        if check is not None:
            check(**values)
        for n, v in values.items():
            if n in buffer_names:
                self.register_buffer(n, v)
            else:
                setattr(self, n, v)

    def forward_(self, *args, **kwargs):
        bound = bind(fwd_sig, f"{name}.forward()", self, *args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())[1:]
        call = {n: getattr(self, n) for n in opts}
        for n, v in zip(per_call, values[n_inputs:]):
            if v is not None:
                call[n] = v
        return fn(*values[:n_inputs], **call)

    __init__.__signature__ = init_sig
    forward_.__signature__ = fwd_sig
    forward_.__name__ = forward_.__qualname__ = "forward"
    __init__.__qualname__ = f"{name}.__init__"
    forward_.__qualname__ = f"{name}.forward"
    shown = ", ".join(p.name if p.default is P.empty else f"{p.name}={p.default!r}"
                      for p in list(fwd_sig.parameters.values())[1:])
    if doc is None:
        doc = f"Module form of :func:`{fn.__module__}.{fn.__name__}`; ``forward({shown})``."
        if overrides:
            doc += (f" A {' / '.join(f'``{n}``' for n in overrides)} given to ``forward`` replaces the constructor's "
                    "for that call.")
    cls = type(name, (nn.Module,), {"__init__": __init__, "forward": forward_, "__doc__": doc,
                                    "__module__": fn.__module__, "__qualname__": name})
    cls.__signature__ = init_sig.replace(parameters=list(init_sig.parameters.values())[1:])
    return cls


def _optional(annotation):
    """``annotation`` widened by ``None`` (a per-call override that may be left out)."""
    if annotation is inspect.Parameter.empty or (isinstance(annotation, str) and "None" in annotation):
        return annotation
    return f"{annotation} | None" if isinstance(annotation, str) else annotation | None
