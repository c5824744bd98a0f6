"""The app runner: what every app in ``apps/`` shares, written once.

- :class:`App`, :class:`Verb`, :class:`Run` (:mod:`core.app.runner`): the command line (verbs, common flags with
  one spelling, layered settings, exit codes, thread default, process launch);
- :class:`AppSettings`, :func:`option` (:mod:`core.app.settings`): settings as one dataclass whose field metadata
  carries help, valid range / choices and whether the field changes the model;
- :class:`RunDir` (:mod:`core.app.run_dir`): fingerprint, method/seed layout, reports on other data apart;
- :class:`Report` (:mod:`core.app.report`): one ``report.json`` schema and ``report.md`` for every app;
- :mod:`core.app.files`: atomic fsync-ed writes, JSON reads and ``weights_only`` checkpoint loads that name the
  file; :mod:`core.app.hardware`: Lightning / Fabric arguments of the hardware flags; :mod:`core.app.threads`.
"""

from core.app.errors import InputError
from core.app.files import CheckpointError, load_torch, read_json, save_torch, write_json, write_text
from core.app.hardware import Hardware, barrier, current, is_main_process
from core.app.report import Report, summarize
from core.app.run_dir import RunDir
from core.app.runner import CAPPED, COMMON_FLAGS, App, Run, Verb
from core.app.settings import AppSettings, option
from core.app.threads import default_threads

__all__ = ["App", "AppSettings", "CAPPED", "CheckpointError", "COMMON_FLAGS", "Hardware", "barrier", "InputError",
           "Report", "Run", "RunDir", "Verb", "current", "default_threads", "is_main_process", "load_torch",
           "option", "read_json", "save_torch", "summarize", "write_json", "write_text"]
