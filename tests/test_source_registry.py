"""The sources' registry is the one list of sources: `python -m records build`, the evaluation
data specs and a recipe's dataset kinds are read from what each registered Source class
declares, so a source registered in the registry alone (here a fake one, through
monkeypatch) is built from the command line, named in a data spec and used as a recipe kind,
and declaring sources loads no TensorFlow."""

import argparse
import inspect
import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

import records.sources as registry
from records.sources.base import (Source, SourceItem, SpecData, argument, argument_dest,
                                  records_error, require_dir)

ROOT = pathlib.Path(__file__).resolve().parents[1]


class FakeSource(Source):
    """PNG files of a folder, each captioned by its flavour and its name."""

    name = "fake"
    description = "PNG files of a folder, each captioned by its name"
    arguments = (argument("root", help="folder of .png files"),
                 argument("--flavour", default="plain", help="word before each caption"))
    spec_syntax = "fake:DIR"
    recipe_split_keys = frozenset({"part"})

    def __init__(self, *, root, flavour="plain", skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        self.root, self.flavour = require_dir(root, "fake root"), flavour

    @classmethod
    def from_spec(cls, rest):
        if not os.path.isdir(rest):
            raise records_error(f"{rest}: no such directory ({cls.spec_syntax})")
        return SpecData({"root": rest}, "fake-" + os.path.basename(rest), rest)

    @staticmethod
    def recipe_build_args(root, split):
        return [os.path.join(root, split["part"])]

    @staticmethod
    def recipe_inputs(root, split):
        return [os.path.join(root, split["part"])]

    def _items(self):
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".png"):
                yield SourceItem(name, os.path.join(self.root, name),
                                 [f"{self.flavour} {name[:-4]}"], -1)


@pytest.fixture
def fake_source(monkeypatch):
    """The fake source registered as "fake" (its module only in sys.modules)."""
    module = types.ModuleType("fake_source_module")
    module.FakeSource = FakeSource
    monkeypatch.setitem(sys.modules, "fake_source_module", module)
    monkeypatch.setitem(registry._REGISTRY, "fake", ("fake_source_module", "FakeSource"))
    return FakeSource


def _photos(folder, names=("red", "blue")):
    from PIL import Image

    folder.mkdir(parents=True)
    for k, name in enumerate(names):
        Image.new("RGB", (16, 12), (200, 40 * k, 30)).save(folder / f"{name}.png")
    return folder


@pytest.mark.parametrize("name", registry.source_names())
def test_every_source_declares_a_description_and_its_constructor_arguments(name):
    cls = registry.source_class(name)
    assert cls.name == name and cls.description and "\n" not in cls.description
    keywords = inspect.signature(cls.__init__).parameters
    parser = argparse.ArgumentParser()
    for flags, kwargs in cls.arguments:
        assert argument_dest(flags, kwargs) in keywords, (name, flags)
        parser.add_argument(*flags, **kwargs)
    from records.__main__ import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["build", name, "--help"])
    assert exit_.value.code == 0
    if cls.spec_syntax:
        assert cls.spec_syntax.startswith(name + ":")
        assert cls.from_spec.__func__ is not Source.from_spec.__func__
    if cls.recipe_split_keys:
        assert cls.recipe_build_args is not Source.recipe_build_args
        assert cls.recipe_inputs is not Source.recipe_inputs


def test_recipe_kinds_and_spec_kinds_are_the_declaring_sources():
    from dualencoder.eval.caption_inputs import spec_kinds
    from dualencoder.recipe_file import DATASET_KINDS

    classes = registry.source_classes()
    assert list(DATASET_KINDS) == [n for n, c in classes.items() if c.recipe_split_keys] \
        == ["flickr", "coco"]
    assert list(spec_kinds()) == [n for n, c in classes.items() if c.spec_syntax] \
        == ["flickr", "coco"]
    keys, build_args, inputs = DATASET_KINDS["coco"]
    assert keys == {"split"} and build_args("C", {"split": "val2017"}) == \
        ["C", "--split", "val2017"]
    assert inputs("C", {"split": "val2017"}) == [os.path.join("C", "annotations",
                                                              "captions_val2017.json"),
                                                 os.path.join("C", "val2017")]


def test_a_source_in_the_registry_alone_builds_from_the_command_line(fake_source, tmp_path,
                                                                     capsys):
    from records.__main__ import _source_options, build_parser, main
    from records.reader import iter_records

    photos = _photos(tmp_path / "photos")
    args = build_parser().parse_args(["build", "fake", str(photos), "--flavour", "striped",
                                      "--out", str(tmp_path / "out")])
    assert args.source == "fake" and _source_options(args) == {"root": str(photos),
                                                                "flavour": "striped"}
    assert main(["build", "fake", str(photos), "--flavour", "striped", "--out",
                 str(tmp_path / "out")]) == 0
    assert "wrote 2 images (2 captions)" in capsys.readouterr().out
    assert [r["captions"] for r in iter_records(str(tmp_path / "out"))] == [["striped blue"],
                                                                            ["striped red"]]
    assert main(["build", "fake", "--out", str(tmp_path / "o2")]) == 2
    assert "the following arguments are required: root" in capsys.readouterr().err


def test_a_source_in_the_registry_alone_is_an_evaluation_data_spec(fake_source, tmp_path):
    from dualencoder.eval.caption_inputs import prepare_caption_data, spec_kinds
    from dualencoder.eval.errors import EvaluationError

    assert list(spec_kinds()) == ["flickr", "coco", "fake"]
    photos = _photos(tmp_path / "photos")
    assert prepare_caption_data(f"fake:{photos}", build=False)[:2] == (None, "fake-photos")
    out, name, info = prepare_caption_data(f"fake:{photos}", cache_dir=str(tmp_path / "cache"))
    assert name == "fake-photos" and info["skipped"] == 0
    assert json.loads((pathlib.Path(out) / "manifest.json").read_text())["num_captions"] == 2
    with pytest.raises(EvaluationError, match=r"nope: no such directory \(fake:DIR\)"):
        prepare_caption_data(f"fake:{tmp_path / 'nope'}")
    with pytest.raises(EvaluationError, match="use flickr:DIR.* or coco:DIR:SPLIT or fake:DIR "
                                              "for raw data"):
        prepare_caption_data(str(photos))


def test_a_source_in_the_registry_alone_is_a_recipe_dataset_kind(fake_source, tmp_path):
    from dualencoder import recipe as R

    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    recipe = {"dataset": {"name": "Fake", "kind": "fake", "root": str(data),
                          "splits": {"train": {"part": "a"}, "dev": {"part": "b"}}},
              "config": str(ROOT / "configs" / "coco_mini_lit.json"),
              "out": str(tmp_path / "run"), "members": [{"name": "m", "seeds": [0]}]}
    R.validate(recipe, "f.json", check_paths=False)
    with pytest.raises(R.RecipeError, match=r"f.json: dataset.splits.dev: split input "
                                            r".*b does not exist"):
        R.validate(recipe, "f.json")
    (data / "b").mkdir()
    R.validate(recipe, "f.json")
    build = R.commands(recipe, str(ROOT), python="py")[0]
    assert build[1] == ["py", "-m", "records", "build", "fake", str(data / "a"), "--out",
                        str(tmp_path / "run" / "records" / "train")]
    recipe["dataset"]["kind"] = "tfds"
    with pytest.raises(R.RecipeError, match="'tfds' is not one of flickr, coco, fake"):
        R.validate(recipe, "f.json", check_paths=False)


def test_source_errors_are_records_errors_and_declaring_sources_loads_no_tensorflow():
    from records.schema import RecordsError
    from records.sources.coco import CocoSource

    with pytest.raises(RecordsError, match="coco data needs a split: coco:DIR:SPLIT"):
        CocoSource.from_spec(str(ROOT))
    code = ("import sys\n"
            "from records.__main__ import build_parser\n"
            "from dualencoder.recipe_file import DATASET_KINDS\n"
            "from dualencoder.eval.caption_inputs import spec_kinds\n"
            "build_parser(); list(DATASET_KINDS); spec_kinds()\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow loaded'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
