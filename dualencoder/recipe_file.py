"""Reading and checking a recipe file (configs/recipes/): the dataset kinds and evaluation
kinds a recipe may name, `--set` overrides, every field checked (and each member's training
settings resolved as train.py resolves them) before anything runs. Stdlib only, apart from
the dataset sources' declarations (`records.sources`) and the training config it resolves."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


class RecipeError(Exception):
    """A recipe that cannot run: one line naming the file and the field."""


class _DatasetKinds(Mapping):
    """Per dataset kind (a `records build` source whose class declares `recipe_split_keys`):
    (split keys, build arguments of one split, paths under the root that must exist), read
    from the sources' registry (`records.sources`) when used."""

    def _kinds(self) -> dict:
        from records.sources import source_classes

        return {name: (set(cls.recipe_split_keys), cls.recipe_build_args, cls.recipe_inputs)
                for name, cls in source_classes().items() if cls.recipe_split_keys}

    def __getitem__(self, kind):
        return self._kinds()[kind]

    def __iter__(self):
        return iter(self._kinds())

    def __len__(self):
        return len(self._kinds())


DATASET_KINDS = _DatasetKinds()
# Per evaluation kind (an evaluate.py command): (allowed keys, required keys, its --data and
# other arguments given (spec, records dir), its report folder's suffix).
EVALUATION_KINDS = {
    "retrieval": ({"split", "bank"}, {"split"},
                  lambda s, rec: ["--data", "records:" + os.path.join(rec, s["split"])] + (
                      ["--bank", os.path.join(rec, s["bank"])] if s.get("bank") else []),
                  lambda s: s["split"] + ("_csls" if s.get("bank") else "")),
    "zeroshot": ({"data", "templates", "title", "tag"}, {"data", "templates", "tag"},
                 lambda s, rec: ["--data", s["data"], "--templates", s["templates"]],
                 lambda s: s["tag"]),
}
TOP_KEYS = {"description", "dataset", "config", "out", "set", "members", "evaluations"}


def load_recipe(path: str, overrides=(), out: str | None = None) -> dict:
    """Read a recipe file, apply `--set key=value` overrides and `--out`, validate it
    (RecipeError: unreadable file, bad override, unknown key, missing field or path)."""
    try:
        with open(path, encoding="utf-8") as fh:
            recipe = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc})") from exc
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: expected a JSON object of recipe fields (dataset, config, "
                          f"members, ...), not a {type(recipe).__name__}")
    for item in overrides:
        apply_override(recipe, item)
    recipe["out"] = out or recipe.get("out")
    validate(recipe, path)
    return recipe


def _index(node, part, key):
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"--set {key}: {part!r} is not an index of the list")
    return int(part)


def apply_override(recipe: dict, item: str) -> None:
    """Apply one `a.b.c=value` to the recipe (value JSON when it parses, else a string;
    `null` removes the key). Under a `set` object the rest of the key is one setting name
    (`set.model.image_size=224`); list items are addressed by index (`members.0.seeds=[0]`)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {item!r}: expected key=value, e.g. dataset.root=/data/coco")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    parts, node = key.split("."), recipe
    for i, part in enumerate(parts[:-1]):
        if part == "set" and isinstance(node, dict):
            parts = parts[:i + 1] + [".".join(parts[i + 1:])]
            node = node.setdefault("set", {})
            break
        if isinstance(node, list):
            node = node[_index(node, part, key)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            break
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif not isinstance(node, dict):
        raise RecipeError(f"--set {key}: {'.'.join(parts[:-1])} is not an object")
    elif value is None:
        node.pop(last, None)
    else:
        node[last] = value


def _fail(path, field, message):
    raise RecipeError(f"{path}: {field}: {message}")


def _check_keys(path, field, obj, allowed, required=()):
    if not isinstance(obj, dict):
        _fail(path, field, "expected an object")
    for key in obj:
        if key not in allowed:
            _fail(path, f"{field}.{key}" if field else key,
                  f"unknown key (expected one of {', '.join(sorted(allowed))})")
    for key in required:
        if obj.get(key) in (None, ""):
            _fail(path, f"{field}.{key}" if field else key, "missing")


def _check_settings(path, field, sets):
    if not isinstance(sets, dict):
        _fail(path, field, 'expected an object of "section.key": value settings')
    for key in sets:
        if key.count(".") != 1 or not all(key.split(".")):
            _fail(path, f"{field}.{key}", 'expected a "section.key" setting, e.g. model.lr')


def _check_path(path, field, target, what, key=None):
    if not os.path.exists(target):
        hint = (" (../shared holds the shared data beside the project: run from the project "
                "root" + (f", or give --set {key}=DIR)" if key else ")")
                if "shared" in target else "")
        _fail(path, field, f"{what} {target} does not exist{hint}")


def validate(recipe: dict, path: str, check_paths: bool = True) -> None:
    """Check every field of a recipe (and that its inputs exist); raise RecipeError naming
    the file and the field."""
    _check_keys(path, "", recipe, TOP_KEYS, ("dataset", "config", "out", "members"))
    for key in ("config", "out"):
        if not isinstance(recipe[key], str):
            _fail(path, key, f"{recipe[key]!r} is not a path")
    ds = recipe["dataset"]
    _check_keys(path, "dataset", ds, {"name", "kind", "root", "splits"},
                ("name", "kind", "splits"))
    if not isinstance(ds["kind"], str) or ds["kind"] not in DATASET_KINDS:
        _fail(path, "dataset.kind", f"{ds['kind']!r} is not one of {', '.join(DATASET_KINDS)}")
    split_keys, _, needs = DATASET_KINDS[ds["kind"]]
    splits = ds["splits"]
    _check_keys(path, "dataset.splits", splits, {"train", "dev"}, ("train", "dev"))
    for name, spec in splits.items():
        _check_keys(path, f"dataset.splits.{name}", spec, split_keys, split_keys)
    _check_settings(path, "set", recipe.get("set", {}))
    members = recipe["members"]
    if not isinstance(members, list) or not members:
        _fail(path, "members", "expected a non-empty list of {name, seeds, set}")
    for i, member in enumerate(members):
        field = f"members.{i}"
        _check_keys(path, field, member, {"name", "seeds", "set"}, ("name", "seeds"))
        name, seeds = member["name"], member["seeds"]
        if not isinstance(name, str) or not name or os.sep in name or name in (".", ".."):
            _fail(path, f"{field}.name", f"{name!r} is not a folder name")
        if not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(
                seeds) or not all(type(s) is int and s >= 0 for s in seeds):
            _fail(path, f"{field}.seeds", f"{seeds!r}: expected distinct integers >= 0, "
                                          "e.g. [0, 1, 2]")
        _check_settings(path, f"{field}.set", member.get("set", {}))
    names = [m[0] for m in member_runs(recipe)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        _fail(path, "members", f"two members share the workdir name {dup[0]!r}")
    evaluations = recipe.get("evaluations", {})
    _check_keys(path, "evaluations", evaluations, EVALUATION_KINDS)
    for name, spec in evaluations.items():
        allowed, required = EVALUATION_KINDS[name][:2]
        _check_keys(path, f"evaluations.{name}", spec, allowed, required)
        for key in ("split", "bank"):
            if spec.get(key) is not None and spec[key] not in splits:
                _fail(path, f"evaluations.{name}.{key}", f"{spec[key]!r} is not a split")
    if not check_paths:
        return
    if not ds.get("root"):
        _fail(path, "dataset.root", f"not set: give the {ds['kind']} root with "
                                    "--set dataset.root=DIR")
    _check_path(path, "dataset.root", ds["root"], "dataset folder", "dataset.root")
    for name, spec in splits.items():
        for need in needs(ds["root"], spec):
            _check_path(path, f"dataset.splits.{name}", need, "split input", "dataset.root")
    _check_path(path, "config", recipe["config"], "training config", "config")
    if "zeroshot" in evaluations:
        _check_path(path, "evaluations.zeroshot.data", evaluations["zeroshot"]["data"],
                    "zero-shot data", "evaluations.zeroshot.data")
    if os.path.exists(recipe["out"]) and not os.path.isdir(recipe["out"]):
        _fail(path, "out", f"{recipe['out']} is a file; give a folder")
    check_member_configs(recipe, path)


def check_member_configs(recipe: dict, path: str) -> None:
    """Resolve every member run's training settings (the config file, the recipe's and the
    member's `set`, its seed) as train.py will, so a bad value fails before any stage runs."""
    from dualencoder.config import Config, ConfigError

    for name, _, sets in member_runs(recipe):
        try:
            Config.from_sources(recipe["config"], sets)
        except ConfigError as exc:
            message = " ".join(str(exc).split())
            _fail(path, f"member {name}", message.removeprefix("--set: "))


def member_runs(recipe: dict) -> list:
    """[(workdir name, seed, [section.key=value, ...])] in training order: a member's first
    seed trains in NAME, the others in NAME_seedN."""
    runs = []
    for member in recipe["members"]:
        sets = {**member.get("set", {}), **recipe.get("set", {})}
        for i, seed in enumerate(member["seeds"]):
            name = member["name"] if i == 0 else f"{member['name']}_seed{seed}"
            runs.append((name, seed, [f"run.seed={seed}"] + [
                f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sets.items()]))
    return runs
