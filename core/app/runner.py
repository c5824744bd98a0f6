"""The app runner: every app's command line, with the same verbs and flags, spelled the same.

An app declares its settings (a subclass of :class:`~core.app.settings.AppSettings`) and its stages::

    APP = App("myapp", "What it does.", MySettings, verbs={
        "fit": Verb(fit, "train the model(s)"),
        "evaluate": Verb(evaluate, "test them; write report.json / report.md"),
        "run": Verb(run, "fit, then evaluate"),
    }, sweep=True)

    def main(argv=None) -> int:
        return APP.main(argv)

Every verb gets the common flags (``--data --config --run-dir --seed --quick --threads --max-minutes
--progress/--no-progress --accelerator --devices --num-nodes --strategy --precision``) and one flag per settings
field; ``sweep`` (when declared) runs ``run`` once per ``--seeds`` value and writes one report over all seeds.
Settings are layered: defaults (or the quick preset), then ``--config`` YAML, then flags; they are validated
before anything is written. With ``devices x num_nodes > 1`` the runner starts the processes (Lightning's
launcher), every core loss gathers negatives from every rank and BatchNorm is synchronised. Exit status: 0; 2 and
``error: <message>`` for bad input; 3 when ``--max-minutes`` stopped some training (re-running continues); 130 on
Ctrl-C, also inside a Lightning fit (re-running the command resumes from the last checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.app.errors import InputError
from core.app.hardware import Hardware, barrier, deadline_stopped, is_main_process, use
from core.app.report import Report
from core.app.run_dir import RunDir
from core.app.settings import AppSettings, field_type, layer, load_yaml

__all__ = ["App", "Verb", "Run", "CAPPED", "COMMON_FLAGS"]

COMMON_FLAGS = ("--data", "--config", "--run-dir", "--seed", "--quick", "--threads", "--max-minutes", "--progress",
                "--no-progress", "--accelerator", "--devices", "--num-nodes", "--strategy", "--precision")
INTERRUPTED = "interrupted: re-run the same command to resume from the last checkpoint"
CAPPED = 3  # exit status when --max-minutes stopped some training (re-run, with a larger cap, to continue)


@dataclass
class Verb:
    """One verb of an app.

    Args:
        run: ``run(ctx: Run) -> None | int``; an int is the exit status.
        help: one line for ``--help``.
        arguments: adds the verb's own flags to its parser (read back from ``ctx.args``).
        settings: ``True``: the app's settings class; another :class:`AppSettings` subclass: that class (a verb
            that needs few options, e.g. a data generator).
        trains: the verb trains (threads are set, processes launched when distributed).
    """

    run: Callable[[Run], int | None]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    settings: bool | type = True
    trains: bool = True


@dataclass
class Run:
    """What a verb receives: the validated settings, the run directory, the hardware, the verb's own flags."""

    app: App
    verb: str
    settings: AppSettings
    args: argparse.Namespace
    quick: bool
    hardware: Hardware
    run_dir: RunDir
    command: str
    started: float = field(default_factory=time.perf_counter)
    report_dir: Path | None = None
    entry_verb: str = ""

    def __post_init__(self) -> None:
        self.entry_verb = self.entry_verb or self.verb

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def is_main(self) -> bool:
        return is_main_process()

    def log(self, msg: str) -> None:
        """Print ``[app] msg`` on the main process."""
        if self.is_main:
            print(f"[{self.app.name}] {msg}", flush=True)

    def claim(self) -> None:
        """Record the settings in the run directory (call once the data has been read and checked)."""
        if self.is_main:
            self.run_dir.claim()

    def report(self, metric: str, *, higher_is_better: bool = True, title: str = "",
               headline: str | None = None) -> Report:
        """A new :class:`Report` for this verb, mode and data (``headline``: the app's default method, which the
        report sets against each baseline)."""
        return Report(app=self.app.name, metric=metric, higher_is_better=higher_is_better, verb=self.entry_verb,
                      mode=self.mode, data=str(self.settings.data), title=title or self.app.name,
                      headline=headline)

    def write_report(self, report: Report, folder: str | Path | None = None) -> dict[str, Any]:
        """Write ``report.json`` / ``report.md`` to ``folder`` (default :attr:`report_dir`, else the run
        directory) on the main process."""
        folder = Path(folder) if folder is not None else (self.report_dir or self.run_dir.path)
        return report.write(folder, settings=self.settings.to_dict(), fingerprint=self.run_dir.fingerprint,
                            seconds=time.perf_counter() - self.started, command=self.command)

    def child(self, verb: str, **changes: Any) -> Run:
        """The same run for another verb (``run`` calling ``fit`` then ``evaluate``), settings changed by
        ``changes``."""
        settings = dataclasses.replace(self.settings, **changes) if changes else self.settings
        return dataclasses.replace(self, verb=verb, settings=settings,
                                   run_dir=RunDir(self.run_dir.path, settings))


class App:
    """An app's command line. See the module docstring."""

    def __init__(self, name: str, description: str, settings: type[AppSettings], verbs: Mapping[str, Verb], *,
                 sweep: bool = False, epilog: str = "", eval_data_field: str | None = None,
                 processes_per_device: int = 1) -> None:
        if not (dataclasses.is_dataclass(settings) and issubclass(settings, AppSettings)):
            raise TypeError("settings must be a dataclass subclassing core.app.AppSettings")
        self.name, self.description, self.settings_cls = name, description, settings
        self.verbs = dict(verbs)
        self.sweep = sweep
        if sweep:
            if "run" not in self.verbs:
                raise TypeError("an app with sweep=True needs a 'run' verb")
            self.verbs["sweep"] = Verb(self._sweep, "run once per seed of --seeds (each method x seed); one report "
                                                    "with every seed's rows and their mean ± std")
        self.epilog = epilog
        self.eval_data_field = eval_data_field
        self.processes_per_device = processes_per_device

    # ---- settings -------------------------------------------------------------------------------------------
    def default_run_dir(self, quick: bool) -> str:
        return f"runs/{self.name}_quick" if quick else f"runs/{self.name}"

    def base_settings(self, cls: type[AppSettings], quick: bool) -> AppSettings:
        base = cls.quick() if quick and hasattr(cls, "quick") else cls()
        if not base.run_dir:
            base = dataclasses.replace(base, run_dir=self.default_run_dir(quick))
        return base

    def _add_settings_flags(self, p: argparse.ArgumentParser, cls: type[AppSettings]) -> None:
        defaults, quick = self.base_settings(cls, False), self.base_settings(cls, True)
        common = p.add_argument_group("common options (every app)")
        own = p.add_argument_group(f"{self.name} options")
        common.add_argument("--config", metavar="FILE.yaml",
                            help="YAML file of options (keys as the flags, with '_' or '-'); flags override it")
        common.add_argument("--quick", action="store_true", default=False,
                            help="the quick preset: small data, few epochs, a minute or two on a CPU")
        base_names = {f.name for f in dataclasses.fields(AppSettings)}
        for f in dataclasses.fields(cls):
            if not f.metadata.get("flag", True):
                continue
            group = common if f.name in base_names else own
            typ, is_list, _ = field_type(cls, f)
            d, q = getattr(defaults, f.name), getattr(quick, f.name)
            text = f.metadata.get("help", "")
            rng = _range_text(f.metadata)
            text += (f" [{rng}]" if rng else "") + f" (default: {d}" + (f"; --quick: {q})" if q != d else ")")
            text = text.replace("%", "%%")
            flag = "--" + f.name.replace("_", "-")
            if typ is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            elif is_list:
                group.add_argument(flag, nargs="+", type=_parser_type(typ), default=None, help=text,
                                   metavar=f.name.upper())
            else:
                group.add_argument(flag, type=_parser_type(typ), default=None, help=text, metavar=f.name.upper())

    def settings_from_args(self, args: argparse.Namespace, cls: type[AppSettings] | None = None) -> AppSettings:
        cls = cls or self.settings_cls
        base = self.base_settings(cls, args.quick)
        yaml_options = load_yaml(args.config, cls) if args.config else {}
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                 if getattr(args, f.name, None) is not None}
        if "run_dir" not in flags and "run_dir" not in yaml_options and args.quick:
            flags["run_dir"] = base.run_dir
        if args.quick and yaml_options:
            full = self.base_settings(cls, False)
            for name, value in yaml_options.items():
                if name not in flags and getattr(base, name) != getattr(full, name) and value != getattr(base, name):
                    print(f"note: {name} = {value} from {args.config} replaces the --quick preset's "
                          f"{getattr(base, name)} (the config file layers over --quick; a flag overrides both)",
                          file=sys.stderr)
        return layer(base, yaml_options, flags).validate()

    # ---- parser ---------------------------------------------------------------------------------------------
    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"python -m apps.{self.name}", description=self.description,
                                         epilog=self.epilog or None,
                                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        sub = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(self.verbs) + "}")
        for name, verb in self.verbs.items():
            p = sub.add_parser(name, help=verb.help, description=verb.help, allow_abbrev=False)
            if verb.arguments is not None:
                verb.arguments(p.add_argument_group(f"{name} options"))
            if name == "sweep":
                p.add_argument("--seeds", nargs="+", type=int, required=True, metavar="SEED",
                               help="the seeds to run (each in <run-dir>/<method>/seed<S>)")
            cls = self._verb_settings(verb)
            if cls is not None:
                self._add_settings_flags(p, cls)
        return parser

    def _verb_settings(self, verb: Verb) -> type[AppSettings] | None:
        if verb.settings is True:
            return self.settings_cls
        if verb.settings is False:
            return None
        return verb.settings

    # ---- main -----------------------------------------------------------------------------------------------
    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv``, validate, launch, run the verb; returns the exit status."""
        argv = list(sys.argv[1:] if argv is None else argv)
        args = self.parser().parse_args(argv)
        command = shlex.join(["python", "-m", f"apps.{self.name}", *argv])
        with _ctrl_c_seen() as seen:
            try:
                return self._main(args, command)
            except SystemExit as e:
                # Lightning answers Ctrl-C inside a fit by saving what it can and calling sys.exit(1): the same
                # "interrupted" line and status 130 as a Ctrl-C anywhere else
                if seen() and e.code == 1:
                    print(INTERRUPTED, file=sys.stderr)
                    return 130
                raise
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            except (ValueError, FileNotFoundError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(INTERRUPTED, file=sys.stderr)
                return 130

    def _main(self, args: argparse.Namespace, command: str) -> int:
        verb = self.verbs[args.verb]
        cls = self._verb_settings(verb)
        if cls is None:
            settings = self.base_settings(AppSettings, getattr(args, "quick", False))
            args.quick = getattr(args, "quick", False)
        else:
            settings = self.settings_from_args(args, cls)
        deadline = None
        if settings.max_minutes is not None:
            deadline = time.monotonic() + 60.0 * settings.max_minutes
        hardware = Hardware(accelerator=settings.accelerator, devices=settings.devices, num_nodes=settings.num_nodes,
                            strategy=settings.strategy, precision=settings.precision, deadline=deadline)
        run_dir = RunDir(settings.run_dir, settings)
        ctx = Run(app=self, verb=args.verb, settings=settings, args=args, quick=args.quick, hardware=hardware,
                  run_dir=run_dir, command=command)
        if self.eval_data_field and getattr(settings, self.eval_data_field, None):
            ctx.report_dir = run_dir.eval_dir(getattr(settings, self.eval_data_field))
        with use(hardware):
            if verb.trains:
                self._set_threads(ctx)
                if hardware.distributed:
                    hardware.fabric()  # starts the other processes (they run this command) and the process group
            if cls is self.settings_cls and is_main_process():  # a verb with its own small settings makes no run
                run_dir.check()
            barrier()
            rc = verb.run(ctx)
            barrier()
            capped = deadline_stopped()
        if isinstance(rc, int):
            return rc
        if capped:
            ctx.log(f"{args.verb}: --max-minutes stopped training before its end (checkpointed); re-run the command, "
                    "with a larger --max-minutes, to continue")
            return CAPPED
        ctx.log(f"{args.verb} done in {time.perf_counter() - ctx.started:.0f} s")
        return 0

    def _set_threads(self, ctx: Run) -> None:
        import torch

        from core.app.threads import default_threads

        s = ctx.settings
        on_cpu = s.accelerator == "cpu" or (s.accelerator == "auto" and not torch.cuda.is_available())
        processes = (s.devices if on_cpu or s.devices > 1 else 1) * self.processes_per_device
        n = s.threads or default_threads(processes=processes)
        torch.set_num_threads(n)
        how = "--threads" if s.threads else f"idle cores / {processes} process(es); --threads to change"
        ctx.log(f"{ctx.verb}: {n} torch thread(s) per process ({how}); run dir {s.run_dir}")

    # ---- sweep ----------------------------------------------------------------------------------------------
    def _sweep(self, ctx: Run) -> int | None:
        seeds = list(dict.fromkeys(ctx.args.seeds))
        run = self.verbs["run"]
        reports = []
        for seed in seeds:
            ctx.log(f"sweep: seed {seed} ({seeds.index(seed) + 1} of {len(seeds)})")
            child = dataclasses.replace(ctx.child("run", seed=seed), started=time.perf_counter())  # own wall time
            child.report_dir = ctx.run_dir.path / f"seed{seed}"
            rc = run.run(child)
            if isinstance(rc, int) and rc != 0:
                return rc
            path = child.report_dir / "report.json"
            if ctx.is_main:
                from core.app.files import read_json

                reports.append(read_json(path, f"report of seed {seed}"))
        if not ctx.is_main:
            return None
        first = reports[0]
        combined = Report(app=self.name, metric=first["metric"], higher_is_better=first["higher_is_better"],
                          verb="sweep", mode=ctx.mode, data=first.get("data", ""), title=self.name,
                          headline=first.get("headline"))
        for r in reports:
            combined.rows.extend(r["rows"])
            combined.baselines += [b for b in r.get("baselines", []) if b not in combined.baselines]
        combined.notes.append(f"seeds {', '.join(map(str, seeds))}; each seed's own report in seed<S>/report.md")
        for r in reports[:1]:
            combined.notes += r.get("notes", [])
        ctx.write_report(combined, ctx.report_dir or ctx.run_dir.path)
        ctx.log(f"sweep report: {(ctx.report_dir or ctx.run_dir.path) / 'report.md'}")
        return None


def _parser_type(typ: type) -> Callable[[str], Any]:
    if typ in (int, float, str):
        return typ
    return str


def _range_text(meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    low, high = meta.get("low"), meta.get("high")
    parts = []
    if low is not None:
        parts.append(f"{'>' if meta.get('low_open') else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if meta.get('high_open') else '<='} {high}")
    return ", ".join(parts)


class _ctrl_c_seen:
    """Within the block, remember whether SIGINT arrived (then act as Python's default handler: raise
    KeyboardInterrupt); ``with _ctrl_c_seen() as seen: ... seen()``. Only in the main thread; restores the handler."""

    def __enter__(self):
        self.hit = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                self.hit = True
                if self.previous == signal.SIG_IGN:
                    return None
                if callable(self.previous) and self.previous is not handler:
                    return self.previous(signum, frame)
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, handler)
        return lambda: self.hit

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
