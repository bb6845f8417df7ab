"""Every command-line tool follows dyntta.cli: help text on every flag, defaults shown, one exit-code rule."""

from __future__ import annotations

import argparse
import importlib

import pytest

from dyntta import cli

# module -> None when it follows the conventions, else why not yet (the owner's open work)
CLIS: dict[str, str | None] = {
    "dyntta.enhancer.__main__": None,
    "dyntta.train.__main__": None,
    "dyntta.evaluate.__main__": None,
    "export.__main__": None,
    "serve.__main__": None,
    "serve.client": None,
    "serve.worker": None,
    "serve.triton.__main__": None,
}


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(module_name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a CLI's ``main`` builds, caught at its ``parse_args`` call (no CLI needs to expose it)."""
    module = importlib.import_module(module_name)

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured) as caught:
        module.main([])
    return caught.value.parser


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


@pytest.mark.parametrize(
    "module_name",
    [
        pytest.param(name, marks=[pytest.mark.xfail(reason=why, strict=False)] if why else [])
        for name, why in CLIS.items()
    ],
)
def test_flags_have_help_and_defaults(module_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = parser_of(module_name, monkeypatch)
    assert cli.undocumented_flags(parser) == []
    for each in _parsers(parser):
        assert issubclass(each.formatter_class, argparse.ArgumentDefaultsHelpFormatter), each.prog


def test_help_shows_defaults_and_keeps_examples() -> None:
    from dyntta.enhancer.__main__ import build_parser

    (sub,) = [p for p in _parsers(build_parser()) if p.prog.endswith("estimate-policy")]
    text = " ".join(sub.format_help().split())
    assert "corruption seed (default: 0)" in text and "ops kept in the policy (default: 4)" in text
    assert "(default: None)" not in text
    assert "\n    python -m dyntta.enhancer estimate-policy --enhancer" in sub.format_help()


def _handler(error: BaseException | None, code: int | None = None):
    def handle(args: argparse.Namespace) -> int | None:
        if error is not None:
            raise error
        return code

    return handle


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (None, None, None),
        (FileNotFoundError("no such checkpoint: /x"), 1, "prog: error: no such checkpoint: /x"),
        (ValueError("bad value"), 1, "prog: error: bad value"),
        (cli.CommandError("server unreachable"), 1, "prog: error: server unreachable"),
        (cli.UsageError("--a and --b exclude each other"), 2, "prog: error: --a and --b exclude each other"),
    ],
)
def test_exit_code_rule(error, code, message, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    parser = cli.ArgumentParser(prog="prog")
    assert cli.run(parser, _handler(error), []) == (code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if message:
        assert err.strip().endswith(message)
    assert ("usage: prog" in err) == (code == 2)


def test_usage_error_from_argparse_is_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.ArgumentParser(prog="prog")
    parser.add_argument("--n", type=int, default=1, help="a number")
    with pytest.raises(SystemExit) as exited:
        cli.run(parser, _handler(None), ["--n", "one"])
    assert exited.value.code == 2 and "invalid int value" in capsys.readouterr().err


def test_bugs_keep_their_traceback_and_debugging_can_ask_for_one(monkeypatch) -> None:
    parser = cli.ArgumentParser(prog="prog")
    with pytest.raises(KeyError):
        cli.run(parser, _handler(KeyError("bug")), [])
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError):
        cli.run(parser, _handler(ValueError("bad value")), [])


def test_enhancer_cli_missing_checkpoint_is_exit_1(tmp_path, capsys, monkeypatch) -> None:
    from dyntta.enhancer.__main__ import main

    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    code = main(["estimate-policy", "--enhancer", str(tmp_path / "missing"), "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "missing" in err
    assert not (tmp_path / "p.json").exists()
