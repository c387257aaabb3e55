"""Fixtures of the reliability suite (helpers: faultkit.py).

Every fault test compares against `reference_run`: 2 epochs x 8 steps of tiny towers on the
test run's 128 synthetic training images (batch 16), ledger on, a checkpoint every 2 steps.
"""

import pytest

from faultkit import BOUNDARY, checkpoint_arrays, quiet, read_ledger, tiny_cfg


@pytest.fixture(scope="session")
def reference_run(synthetic_records, tmp_path_factory):
    """An uninterrupted run: {"workdir", "ledger", "final" (newest checkpoint arrays)}."""
    from dualencoder.train.loop import train

    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    train(tiny_cfg(synthetic_records["train"]), workdir, log=quiet)
    return {"workdir": workdir, "ledger": read_ledger(workdir),
            "final": checkpoint_arrays(workdir), "records": synthetic_records["train"]}


@pytest.fixture(scope="session")
def boundary_reference_run(synthetic_records, tmp_path_factory):
    """`reference_run` with both towers cut at a boundary (`faultkit.BOUNDARY`): epochs read
    the frozen parts' cached outputs."""
    from dualencoder.train.loop import train

    workdir = str(tmp_path_factory.mktemp("boundary_reference") / "run")
    summary = train(tiny_cfg(synthetic_records["train"], BOUNDARY), workdir, log=quiet)
    assert summary["cached_features"] == "image boundary, text boundary"
    return {"workdir": workdir, "ledger": read_ledger(workdir), "extra": BOUNDARY,
            "final": checkpoint_arrays(workdir), "records": synthetic_records["train"]}
