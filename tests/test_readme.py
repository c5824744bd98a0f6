"""The README (and the docs pages) cannot drift from the code: every ``python -m apps... / core... / tools...``
command in their code blocks parses (apps: and its settings validate), the "Using core" snippet runs, the README
stays a short entry point, and neither speaks of how the project was made."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "apps").glob("*.md"))]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```([\w-]*)\n(.*?)^```", text, flags=re.M | re.S)


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """(module, argv) of every `python -m` / `torchrun ... -m` command of the module families we own."""
    out = []
    text = path.read_text()
    lines = [ln for lang, body in code_blocks(text) if lang in ("", "bash", "sh", "shell", "console")
             for ln in body.replace("\\\n", " ").splitlines()]
    outside = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # inline code, e.g. in tables
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", outside)]  # may wrap across lines
    lines += [span for span in spans if "python -m " in span]
    for line in lines:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if "-m" not in words:
            continue
        i = words.index("-m")
        if i + 1 >= len(words):
            continue
        module = words[i + 1]
        if module.split(".")[0] in ("apps", "core", "tools") and not any(w.startswith(">") for w in words):
            out.append((module, words[i + 2:]))
    return out


ALL = [(p.relative_to(REPO).as_posix(), m, a) for p in PAGES for m, a in commands(p)]


class _Parsed(Exception):
    pass


def test_the_pages_have_commands():
    assert sum(1 for page, _, _ in ALL if page == "README.md") >= 8


@pytest.mark.parametrize("page,module,argv", ALL, ids=[f"{p}:{m} {' '.join(a)}"[:90] for p, m, a in ALL])
def test_command_parses(page, module, argv, monkeypatch):
    if module.startswith("apps.") and module.count(".") == 1:
        app = importlib.import_module(f"{module}.__main__").APP
        if "--help" in argv or "-h" in argv:
            with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(io.StringIO()):
                app.parser().parse_args(argv)
            assert e.value.code == 0
            return
        args = app.parser().parse_args(argv)  # SystemExit(2) on an unknown flag or a bad value
        verb = app.verbs[args.verb]
        if verb.settings is not False:
            app.settings_from_args(args, None if verb.settings is True else verb.settings)
        return
    if argv in (["--help"], ["-h"]):
        return

    def parse(self, args=None, namespace=None):
        _, extra = argparse.ArgumentParser.parse_known_args(self, args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
    monkeypatch.setattr("core.tour._REGISTRY", {})  # re-running a module registers its tour entry again
    monkeypatch.setattr(sys, "argv", [module, *argv])
    with pytest.raises(_Parsed):
        runpy.run_module(module, run_name="__main__")


def test_using_core_snippet_runs():
    text = (REPO / "README.md").read_text()
    section = text.split("## Using `core` in your own code", 1)[1]
    snippet = next(body for lang, body in code_blocks(section) if lang == "python")
    exec(compile(snippet, "README.md", "exec"), {})


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_pages_speak_of_the_project_only(page):
    text = page.read_text()
    for pattern in (r"\bsessions? \d", r"\blease[ds]?\b", r"\b(this|earlier|later|next) session"):
        assert not re.search(pattern, text, flags=re.I), (page.name, pattern)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_local_links_exist(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), (page.name, target)
