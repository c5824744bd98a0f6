"""The config convention of apps: LightningCLI with YAML configs and resumable runs.

An app's ``__main__.py`` is a few lines (shown as a doctest so that ``core`` itself never imports an app)::

    >>> from core.training.cli import run_cli
    >>> from apps.myapp.model import MyModel
    >>> from apps.myapp.data import MyData
    >>> if __name__ == "__main__":
    ...     run_cli(MyModel, MyData)

and is run as ``python -m apps.myapp fit --config apps/myapp/configs/quick.yaml`` (any option can be
overridden on the command line, e.g. ``--trainer.max_epochs=5 --model.lr=3e-4``;
``python -m apps.myapp fit --print_config`` shows every option). Defaults added here:

* ``trainer.default_root_dir = runs/<app>``; checkpoints in ``<root>/checkpoints`` (``last.ckpt`` plus one
  per epoch, none deleted), CSV logs in ``<root>/logs/version_K``, the resolved config in
  ``<root>/logs/version_K/config.yaml``;
* ``fit`` resumes from ``<root>/checkpoints/last.ckpt`` when it exists and no ``--ckpt_path`` is given;
  use another ``--trainer.default_root_dir`` to start a separate run;
* ``seed_everything = 42``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI

from core.training.callbacks import csv_logger, default_callbacks
from core.training.checkpoint_io import AtomicCheckpointIO
from core.training.resume import find_resume_checkpoint

__all__ = ["ContrastiveCLI", "run_cli"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class ContrastiveCLI(LightningCLI):
    """LightningCLI that adds the project's default callbacks, logger and checkpoint writer, and resumes."""

    run_dir: Path

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        self.run_dir = Path(config.get("default_root_dir") or ".")
        given = [*_as_list(config.get("callbacks")), *extra, *_as_list(self.trainer_defaults.get("callbacks"))]
        extra += default_callbacks(
            self.run_dir,
            progress_bar=config.get("enable_progress_bar") is not False
            and not any(isinstance(c, ProgressBar) for c in given),
            checkpoint=config.get("enable_checkpointing") is not False
            and not any(isinstance(c, ModelCheckpoint) for c in given),
        )
        if config.get("logger") in (None, True):
            config["logger"] = csv_logger(self.run_dir)
        if not config.get("plugins"):
            config["plugins"] = [AtomicCheckpointIO()]
        return self._instantiate_trainer(config, extra)

    def before_fit(self) -> None:
        fit_config = self.config_init[self.subcommand]
        if fit_config.get("ckpt_path") is None:
            last = find_resume_checkpoint(self.run_dir)
            if last is not None:
                print(f"[run_cli] resuming from {last}")
                fit_config["ckpt_path"] = str(last)


def _app_name(model_class: type) -> str:
    parts = getattr(model_class, "__module__", "").split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "apps" else "default"


def run_cli(
    model_class: type,
    datamodule_class: type | None = None,
    *,
    app_name: str | None = None,
    args: Sequence[str] | dict[str, Any] | None = None,
    run: bool = True,
    trainer_defaults: dict[str, Any] | None = None,
    seed: int = 42,
    **cli_kwargs: Any,
) -> ContrastiveCLI:
    """Run (or, with ``run=False``, just build) the app's LightningCLI.

    Args:
        model_class: the app's LightningModule class.
        datamodule_class: its LightningDataModule class, or ``None`` if the model makes its own loaders.
        app_name: names the default run directory ``runs/<app_name>``; derived from
            ``model_class.__module__`` (``apps.<name>.…``) when omitted.
        args: command-line arguments (default ``sys.argv[1:]``); handy in tests.
        run: run the subcommand (``fit``, ``validate``, ``test``, ``predict``); ``False`` only instantiates
            model, data and trainer from ``args`` (no subcommand).
        trainer_defaults: extra Trainer defaults, overridable from YAML / command line.
        seed: default ``seed_everything``.
        **cli_kwargs: passed to :class:`lightning.pytorch.cli.LightningCLI`.

    Returns:
        The CLI object (``cli.model``, ``cli.datamodule``, ``cli.trainer``).
    """
    name = app_name or _app_name(model_class)
    defaults = {"default_root_dir": str(Path("runs") / name), **(trainer_defaults or {})}
    cli_kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites its config
    return ContrastiveCLI(
        model_class,
        datamodule_class,
        trainer_defaults=defaults,
        seed_everything_default=seed,
        args=args,
        run=run,
        **cli_kwargs,
    )
