"""Every app's command line comes from the one runner: each verb's ``--help`` lists the common flags, spelled one
way (kebab-case), with the same meaning (the same help text) in every app."""

from __future__ import annotations

import contextlib
import importlib
import io
import re

import pytest

from core.app import COMMON_FLAGS, App

APPS = ["anomaly", "recommendation", "regression", "rl", "speaker", "tracking"]


def _help(app: App, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        app.parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    return out.getvalue()


def _flag_help(text: str, flag: str) -> str:
    """The help text of ``flag`` in an argparse ``--help`` output (whitespace collapsed)."""
    m = re.search(rf"^\s+{re.escape(flag)}(?:[ ,=][^\n]*)?\n?((?:\s{{10,}}[^\n]*\n)*)", text, flags=re.M)
    assert m, flag
    return " ".join(m.group(0).split())


@pytest.mark.parametrize("name", APPS)
def test_help_of_every_verb_has_the_common_flags(name):
    app = importlib.import_module(f"apps.{name}.__main__").APP
    assert isinstance(app, App)
    top = _help(app, [])
    for verb in ("fit", "evaluate", "run"):
        assert verb in app.verbs, (name, verb)
        assert verb in top
    for verb, spec in app.verbs.items():
        text = _help(app, [verb])
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        assert not [f for f in flags if "_" in f], (name, verb)
        if spec.settings is False:
            continue
        missing = [f for f in COMMON_FLAGS if f not in flags]
        assert not missing, (name, verb, missing)


def test_common_flags_mean_the_same_in_every_app():
    seen: dict[str, set[str]] = {}
    for name in APPS:
        app = importlib.import_module(f"apps.{name}.__main__").APP
        text = _help(app, ["fit"])
        for flag in ("--run-dir", "--seed", "--threads", "--max-minutes", "--devices", "--num-nodes", "--strategy",
                     "--precision", "--accelerator", "--config", "--quick"):
            h = _flag_help(text, flag)
            h = re.sub(r"\(default: [^)]*\)", "", h).replace(f"runs/{name}", "runs/<app>")
            seen.setdefault(flag, set()).add(h)
    differing = {f: v for f, v in seen.items() if len(v) > 1}
    assert not differing, differing
