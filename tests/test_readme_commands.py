"""Every `python ...` command in README.md names a program that exists and parses with that
program's own parser (the commands the README promises work as written; running them is the
slow tests' and `make demo`'s job)."""

import importlib
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARSERS = {  # program -> (module, function returning a parser or parsing argv)
    "train.py": ("dualencoder.cli.train", "parse_args"),
    "evaluate.py": ("dualencoder.cli.evaluate", "build_parser"),
    "retrieval.py": ("dualencoder.cli.retrieval", "build_parser"),
    "recipe.py": ("dualencoder.cli.recipe", "build_parser"),
    "-m records": ("records.__main__", "build_parser"),
}


def readme_commands():
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python "):
                commands.append(line)
    return commands


def test_readme_has_commands():
    programs = {shlex.split(c)[1] for c in readme_commands()}
    assert {"train.py", "evaluate.py", "retrieval.py", "-m"} <= programs


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command, monkeypatch, tmp_path):
    argv = shlex.split(command)[1:]
    program = "-m records" if argv[0] == "-m" else argv[0]
    argv = argv[2:] if argv[0] == "-m" else argv[1:]
    assert program in PARSERS, f"README runs an unknown program: {command}"
    if argv[-1:] in (["--help"], ["--help-config"]):
        argv = [a for a in argv if a not in ("--help", "--help-config")]
    assert (ROOT / program).exists() or program == "-m records"
    module, name = PARSERS[program]
    make = getattr(importlib.import_module(module), name)
    monkeypatch.chdir(tmp_path)  # outputs are checked against a clean folder
    if name == "parse_args":
        make(argv)
    else:
        make().parse_args(argv)
