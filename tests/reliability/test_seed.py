"""The training input order is a pure function of the seed: same seed, same batches of ids;
another seed, other ones. Checked on the function training uses (setup.train_dataset) and
against the ledger of a real run."""

from faultkit import last_per_step, tiny_cfg
from dualencoder.train import setup
from dualencoder.model.tokenizer import Tokenizer, tiny_vocabulary

FIRST = 5


def _first_batches(records, seed, epoch=0):
    cfg = tiny_cfg(records, [f"run.seed={seed}"])
    tok = Tokenizer(tiny_vocabulary(), sequence_length=16)
    ds = setup.train_dataset(cfg, records, tok, epoch=epoch)
    return [b["image_index"].numpy().tolist() for b in ds.take(FIRST)]


def test_same_seed_same_batches_other_seed_other_batches(reference_run):
    records = reference_run["records"]
    a, b = _first_batches(records, 0), _first_batches(records, 0)
    assert a == b
    trained = [r["ids"] for r in last_per_step(reference_run["ledger"])[:FIRST]]
    assert a == trained  # what the seed-0 run actually trained on
    other = _first_batches(records, 1)
    assert all(x != y for x, y in zip(a, other))
    assert sorted(sum(a, [])) != sorted(sum(other, []))
    assert _first_batches(records, 0, epoch=1) != a  # and each epoch has its own order
