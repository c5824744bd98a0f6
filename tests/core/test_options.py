"""core.training.options: YAML layering and dataclass flags of the argparse apps."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from core.training.options import add_dataclass_options, load_yaml_options, options_from_args


@dataclasses.dataclass
class Cfg:
    lr: float = 0.1
    epochs: int = 10
    names: list[str] = dataclasses.field(default_factory=lambda: ["a"])
    shuffle: bool = True
    data: str | None = None


HELP = {"lr": "learning rate", "epochs": "epochs", "names": "names", "shuffle": "shuffle", "data": "data path"}


def _parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_dataclass_options(p, Cfg, HELP, Cfg(), dataclasses.replace(Cfg(), epochs=2))
    return p, p.parse_args(argv)


def test_layering_defaults_then_yaml_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\nepochs: 3\n")
    _, args = _parse(["--config", str(f), "--epochs", "7", "--no-shuffle", "--names", "x", "y", "--data", "d"])
    cfg = options_from_args(args, Cfg(), load_yaml_options(args.config, Cfg))
    assert cfg == Cfg(lr=0.5, epochs=7, names=["x", "y"], shuffle=False, data="d")
    _, args = _parse([])
    assert options_from_args(args, Cfg()) == Cfg()


def test_help_states_default_and_quick_value():
    p, _ = _parse([])
    text = p.format_help()
    assert "(default: 10; --quick: 2)" in text and "(default: 0.1)" in text


@pytest.mark.parametrize("content,match", [("epochs: 3\nlr: : 2\n", "line 2"), ("- 1\n- 2\n", "mapping"),
                                           ("speed: 3\n", "unknown option")])
def test_bad_yaml_is_named(tmp_path, content, match):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        load_yaml_options(f, Cfg)
    assert "bad.yaml" in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_yaml_options(tmp_path / "missing.yaml", Cfg)


def test_check_run_limits_names_the_bad_option():
    from core.training.options import check_run_limits

    check_run_limits("cuda", 2.5)
    check_run_limits("cpu", None)
    for acc, minutes, name in (("tpu", None, "accelerator"), ("cpu", 0, "max_minutes"), ("cpu", -1.0, "max_minutes"),
                               ("cpu", True, "max_minutes"), ("cpu", "5", "max_minutes")):
        with pytest.raises(KeyError, match=name):
            check_run_limits(acc, minutes, KeyError)


def test_run_command_exit_codes(capsys):
    from core.training.options import INTERRUPTED, run_command

    class DataError(ValueError):
        pass

    def bad():
        raise DataError("data.txt line 3: expected integers")

    def interrupted():
        raise KeyboardInterrupt

    assert run_command("app", bad) == 2
    assert capsys.readouterr().err == "error: data.txt line 3: expected integers\n"
    assert run_command("app", interrupted) == 130
    assert capsys.readouterr().err == INTERRUPTED + "\n"
    assert run_command("app", lambda: None, started=0.0) == 0
    assert capsys.readouterr().out.startswith("[app] done in ")
    assert run_command("app", lambda: 3, started=0.0) == 3
    assert capsys.readouterr().out == ""  # a verb that sets its exit code prints no timing line
    with pytest.raises(RuntimeError):  # a bug is not an input error: it propagates with its traceback
        run_command("app", lambda: (_ for _ in ()).throw(RuntimeError("bug")))
