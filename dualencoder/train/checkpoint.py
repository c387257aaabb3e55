"""Atomic, checksummed training checkpoints with fallback to the previous good one.

Layout under a directory:
    ckpt-00000200/variables.npz   every model and optimizer variable (incl. RNG seed states)
    ckpt-00000200/state.json      step, epoch, data position, schedule state, sha256 of the npz
    checkpoint.json               the pointer: checkpoint names, newest last

A checkpoint is written into a temporary folder, fsynced and renamed, and only then is the
pointer replaced (itself written to a temporary file and renamed). A crash at any moment leaves
the pointer naming complete checkpoints. On restore the newest checkpoint whose bytes match its
recorded sha256 wins; a damaged one is reported with a warning and skipped.

Example:
```python
manager = CheckpointManager("runs/x/checkpoints", keep=2)
manager.save({"model": model.variables, "optimizer": optimizer.variables}, {"step": 200})
state = manager.restore({"model": model.variables, "optimizer": optimizer.variables})
```
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np

from records import files
from records.files import sha256_file

POINTER = "checkpoint.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the model being restored."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _flatten(groups: dict) -> list[tuple[str, object]]:
    return [(f"{group}/{i:05d}", v) for group in sorted(groups) for i, v in enumerate(groups[group])]


class CheckpointManager:
    """Saves and restores variable groups plus a JSON state. See the module docstring.

    Args:
        directory: where checkpoints live (created if needed).
        keep: how many complete checkpoints to keep (>= 2 so a damaged newest one has a
            fallback).
    """

    def __init__(self, directory: str, keep: int = 2):
        self.directory = directory
        self.keep = max(2, int(keep))
        os.makedirs(directory, exist_ok=True)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Delete temporary folders left by a process that died while saving (its pid gone)."""
        for name in os.listdir(self.directory):
            if not (name.startswith(".ckpt-") and ".tmp-" in name):
                continue
            pid = name.rsplit(".tmp-", 1)[1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    # -- pointer ---------------------------------------------------------------------------
    def _read_pointer(self) -> list[str]:
        path = os.path.join(self.directory, POINTER)
        if not os.path.exists(path):
            return []
        try:
            with open(path, encoding="utf-8") as fh:
                names = json.load(fh)["checkpoints"]
            return [n for n in names if isinstance(n, str)]
        except (OSError, ValueError, KeyError, TypeError):
            warnings.warn(f"{path} is unreadable; looking for checkpoints on disk instead")
            return sorted(n for n in os.listdir(self.directory)
                          if n.startswith("ckpt-") and ".tmp" not in n)

    def checkpoints(self) -> list[str]:
        """Names of the checkpoints the pointer lists, oldest first."""
        return self._read_pointer()

    # -- save --------------------------------------------------------------------------------
    def save(self, groups: dict, state: dict) -> str:
        """Write a checkpoint named after `state["step"]`; returns its folder."""
        name = f"ckpt-{int(state['step']):08d}"
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        flat = _flatten(groups)
        arrays = {key: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for key, v in flat}
        npz = os.path.join(tmp, "variables.npz")
        with open(npz, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        shapes = {key: list(a.shape) for key, a in arrays.items()}
        meta = dict(state, variables_sha256=sha256_file(npz), shapes=shapes)
        files.write_json_atomic(os.path.join(tmp, "state.json"), meta, indent=2, sort_keys=True)
        if os.path.exists(final):  # same step saved again (e.g. after a restart): replace
            shutil.rmtree(final)
        os.replace(tmp, final)
        names = [n for n in self._read_pointer() if n != name] + [name]
        files.write_json_atomic(os.path.join(self.directory, POINTER),
                                {"checkpoints": names[-self.keep:]}, indent=2, sort_keys=True)
        for old in names[:-self.keep]:
            shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
        return final

    # -- restore -----------------------------------------------------------------------------
    def _load(self, name: str):
        folder = os.path.join(self.directory, name)
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as fh:
            meta = json.load(fh)
        npz = os.path.join(folder, "variables.npz")
        if sha256_file(npz) != meta["variables_sha256"]:
            raise CheckpointError(f"{npz}: sha256 does not match state.json (damaged bytes)")
        with np.load(npz) as data:
            arrays = {k: data[k] for k in data.files}
        return meta, arrays

    def restore(self, groups: dict) -> dict | None:
        """Assign the newest intact checkpoint to `groups`; returns its state, or None if none.

        Raises:
            CheckpointError: a checkpoint is intact but its variables do not fit `groups`
                (another model configuration), or every listed checkpoint is damaged.
        """
        names = self._read_pointer()
        if not names:
            return None
        problems = []
        for name in reversed(names):
            try:
                meta, arrays = self._load(name)
            except (OSError, ValueError, KeyError, CheckpointError) as exc:
                problems.append(f"{name}: {exc}")
                warnings.warn(f"checkpoint {name} is damaged ({exc}); "
                              "falling back to the previous one")
                continue
            flat = _flatten(groups)
            if sorted(arrays) != sorted(k for k, _ in flat):
                raise CheckpointError(
                    f"{self.directory}/{name} holds {len(arrays)} variables, the model has "
                    f"{len(flat)}: the workdir belongs to a different model configuration")
            for key, var in flat:
                value = arrays[key]
                if tuple(value.shape) != tuple(var.shape):
                    raise CheckpointError(
                        f"{self.directory}/{name}: variable {key} ({getattr(var, 'path', '')}) "
                        f"has shape {value.shape} in the checkpoint, {tuple(var.shape)} in the "
                        "model: the workdir belongs to a different model configuration")
                var.assign(value)
            meta = dict(meta)
            meta.pop("shapes", None)
            meta["checkpoint"] = name
            return meta
        raise CheckpointError(f"{self.directory}: no intact checkpoint ({'; '.join(problems)})")
