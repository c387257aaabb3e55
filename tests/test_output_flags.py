"""Every program's output flag naming an existing file (or a path inside one) is one `error:`
line and exit status 2, before any work starts."""

import importlib

import pytest

PROGRAMS = {  # name -> (module with main(argv), argv with OUT where the output goes)
    "records build": ("records.__main__", ["build", "synthetic", "--out", "OUT"]),
    "records inspect": ("records.__main__", ["inspect", "RECORDS", "--out", "OUT.png"]),
    "train.py --workdir": ("dualencoder.cli.train", ["--workdir", "OUT"]),
    "evaluate.py zeroshot": ("dualencoder.cli.evaluate",
                             ["zeroshot", "--model", "M", "--data", "D", "--out", "OUT"]),
    "evaluate.py compare": ("dualencoder.cli.evaluate", ["compare", "R", "--out", "OUT"]),
    "recipe.py --out": ("dualencoder.cli.recipe", ["configs/recipes/coco_mini.json",
                                                   "--out", "OUT"]),
    "retrieval.py index": ("dualencoder.cli.retrieval",
                           ["index", "--model", "M", "--images", "I", "--out", "OUT"]),
}


def _run(capsys, name, out):
    module, argv = PROGRAMS[name]
    argv = [a.replace("OUT", out) for a in argv]
    code = importlib.import_module(module).main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("name", list(PROGRAMS))
@pytest.mark.parametrize("where", ["the file", "inside the file"])
def test_output_flag_on_a_file_is_one_error(tmp_path, capsys, name, where):
    target = tmp_path / "taken"
    target.write_text("not a folder\n")
    out = str(target) if where == "the file" else str(target / "sub")
    if name == "records inspect":  # a PNG: the file itself may be replaced, not its folder
        if where == "the file":
            pytest.skip("an existing PNG is overwritten")
        out = str(target / "sheet")
    code, err = _run(capsys, name, out)
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and str(target) in err, err


def test_inspect_wants_a_png_name(tmp_path, capsys):
    code = importlib.import_module("records.__main__").main(
        ["inspect", "RECORDS", "--out", str(tmp_path / "sheet.txt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "ending in .png" in err and "\n" not in err, err
