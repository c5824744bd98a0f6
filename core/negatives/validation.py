"""How much the losses check their input: ``"full"`` (default) or ``"shapes"``.

``"full"`` runs every check: types, shapes and dtypes, plus the *value* checks that read data back to the host
(NaN / inf scans of embeddings, labels and weights, embeddings with no direction under cosine similarity,
temperatures given as tensors, "an anchor has no positive" ...) and, under ``gather=``, the two all-reduces per
call by which every rank learns that another rank's input failed
(:func:`core.negatives.distributed.agree_on_input_errors`).

``"shapes"`` keeps the checks that cost nothing (types, shapes, dtypes, settings given as Python numbers) and
drops the rest: no host synchronisation and no extra collective on the hot path. A NaN then propagates into the
loss instead of raising, and a rank whose input fails a shape check raises alone while the others wait in the
next collective (the job hangs until the process group's timeout); switch to it once a training script runs.
Every rank must use the same mode (the agreement's all-reduces run only under ``"full"``). The mode is one
process-wide setting, not per thread.

    validation("shapes")            # from now on (global setter)
    with validation("shapes"):      # only inside the block; the previous mode comes back on exit
        loss = info_nce(q, k)
"""

from __future__ import annotations

__all__ = ["VALIDATION_MODES", "full_validation", "validation", "validation_mode"]

VALIDATION_MODES = ("full", "shapes")
_mode = "full"


def validation_mode() -> str:
    """The current mode, ``"full"`` or ``"shapes"``."""
    return _mode


def full_validation() -> bool:
    """Whether the value checks (host synchronisations, cross-rank error agreement) run now."""
    return _mode == "full"


class validation:  # noqa: N801 -- used like a function: ``validation("shapes")`` or ``with validation("shapes"):``
    """Set the validation mode now; used as a context manager, restore the previous mode on exit."""

    def __init__(self, mode: str) -> None:
        global _mode
        if mode not in VALIDATION_MODES:
            raise ValueError(f"validation mode must be one of {VALIDATION_MODES}, got {mode!r}")
        self.previous, self.mode = _mode, mode
        _mode = mode

    def __enter__(self) -> validation:
        return self

    def __exit__(self, *exc) -> None:
        global _mode
        _mode = self.previous

    def __repr__(self) -> str:
        return f"validation({self.mode!r})"
