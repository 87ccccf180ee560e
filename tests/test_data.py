"""Reading, cleaning and splitting user data; clear DataErrors naming file, row and column."""

from __future__ import annotations

import json

import pytest

from autotune.config.job import DataConfig
from autotune.data.prepare import prepare
from autotune.errors import DataError


def cfg(**kw):
    base = {"text_column": "text", "label_column": "label"}
    return DataConfig(**{**base, **kw})


def test_cleaning_counts_and_stratified_split(tmp_path):
    p = tmp_path / "d.csv"
    lines = ["text,label"]
    for i in range(60):
        lines.append(f"example number {i},{'a' if i % 3 else 'b'}")
    lines += ["example number 1,a", "   ,a", "x" * 50 + ",b", "no label,"]
    p.write_text("\n".join(lines) + "\n")
    data = prepare(p, cfg(max_chars=40, too_long="drop"))
    c = data.cleaning
    assert (c.rows_read, c.duplicates, c.empty_text, c.dropped_too_long, c.missing_label) == (64, 1, 1, 1, 1)
    assert c.rows_kept == 60
    assert data.labels == ["a", "b"]
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sum(sizes.values()) == 60
    for split, rows in data.splits.items():  # both classes in every split, in proportion
        labels = [l for _, l in rows]
        assert 0.2 < labels.count(1) / len(labels) < 0.5, split
    again = prepare(p, cfg(max_chars=40, too_long="drop"))
    assert again.fingerprint == data.fingerprint and again.splits == data.splits
    other = prepare(p, cfg(max_chars=40, too_long="drop", split={"seed": 1}))
    assert other.fingerprint != data.fingerprint


def test_truncate_and_integer_labels_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"t": ("word " * 30) if i == 0 else f"row {i}", "y": i % 2} for i in range(40)]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    data = prepare(p, cfg(text_column="t", label_column="y", max_chars=20))
    assert data.cleaning.truncated == 1
    assert data.labels == ["0", "1"]


@pytest.mark.parametrize(
    "content,kw,message",
    [
        (b"", {}, r"d.csv: the file is empty"),
        (b"text,label\n", {}, r"d.csv: no rows"),
        (b"body,label\nhello,a\n", {}, r"d.csv: column 'text' not found \(data.text_column; the file has columns: body, label\)"),
        (b"text,label\n" + b"".join(b"t%d,a\n" % i for i in range(30)), {},
         r"column 'label' must hold at least 2 classes after cleaning \(got 1: \{'a': 30\}\)"),
        (b"text,label\n" + b"".join(b"t%d,a\n" % i for i in range(30)) + b"x,b\ny,b\n", {},
         r"every class needs at least 10 examples for the split 0.8/0.1/0.1 \(too few: \{'b': 2\}\)"),
        (b"text,label\nok,a\nbad \xff\xfe,b\n", {}, r"d.csv: line 3: not UTF-8 text \(byte 0xff"),
    ],
    ids=["empty", "header-only", "missing-column", "one-class", "too-few", "undecodable"],
)
def test_data_errors(tmp_path, content, kw, message):
    p = tmp_path / "d.csv"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare(p, cfg(**kw))


def test_tokenization_is_cached_by_fingerprint_tokenizer_and_length(tmp_path, tiny_model_dir, synthetic_csv):
    import numpy as np
    from transformers import AutoTokenizer

    from autotune.training.model import tokenize_splits

    data = prepare(synthetic_csv, cfg(text_column="review", label_column="sentiment"))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    first, hit1 = tokenize_splits(data, tok, 16, tmp_path)
    second, hit2 = tokenize_splits(data, tok, 16, tmp_path)
    assert (hit1, hit2) == (False, True)
    assert np.array_equal(first["train"]["input_ids"], second["train"]["input_ids"])
    _, hit3 = tokenize_splits(data, tok, 24, tmp_path)  # another max_length is another entry
    assert hit3 is False
    assert first["train"]["input_ids"].shape == (len(data.splits["train"]), 16)


def test_a_local_tokenizer_is_keyed_by_its_files_and_a_hit_loads_nothing(tmp_path, tiny_model_dir, synthetic_csv):
    import shutil

    import numpy as np
    from transformers import AutoTokenizer

    from autotune.training.model import tokenize_splits

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = prepare(synthetic_csv, cfg(text_column="review", label_column="sentiment"))
    loads = []

    def load():
        loads.append(1)
        return AutoTokenizer.from_pretrained(model)

    first, hit1 = tokenize_splits(data, load, 16, tmp_path / "cache", model_dir=model)
    second, hit2 = tokenize_splits(data, load, 16, tmp_path / "cache", model_dir=model)
    assert (hit1, hit2, len(loads)) == (False, True, 1)  # the hit never loaded the tokenizer
    assert np.array_equal(first["train"]["input_ids"], second["train"]["input_ids"])
    # the same folder, the same vocabulary size, other behaviour (lower-casing off): a new entry, not stale tokens
    config = model / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"do_lower_case": true', '"do_lower_case": false'))
    assert '"do_lower_case": false' in config.read_text()
    _, hit3 = tokenize_splits(data, load, 16, tmp_path / "cache", model_dir=model)
    assert (hit3, len(loads)) == (False, 2)


def test_split_column_keeps_the_files_own_split(tmp_path):
    from autotune.config.job import DataConfig
    from autotune.data.prepare import prepare
    from autotune.errors import DataError

    path = tmp_path / "given.csv"
    rows = [("good film", "pos", "train"), ("bad film", "neg", "train"), ("great plot", "pos", "Training"),
            ("awful plot", "neg", "train"), ("nice one", "pos", "validation"), ("poor one", "neg", "val"),
            ("lovely", "pos", "test"), ("dreadful", "neg", "dev")]
    path.write_text("text,label,split\n" + "".join(f"{t},{l},{s}\n" for t, l, s in rows))
    data = prepare(path, DataConfig(path="given.csv", split_column="split", max_examples=10))
    texts = {k: sorted(t for t, _ in v) for k, v in data.splits.items()}
    assert texts == {"train": ["awful plot", "bad film", "good film", "great plot"],
                     "validation": ["dreadful", "nice one", "poor one"], "test": ["lovely"]}
    path.write_text(path.read_text().replace("lovely,pos,test", "lovely,pos,holdout"))
    with pytest.raises(DataError, match=r"column 'split' \(data.split_column\) must say train, validation or test "
                                        r"in every row \(got line 8: 'holdout'\)"):
        prepare(path, DataConfig(path="given.csv", split_column="split"))
    with pytest.raises(DataError, match=r"gives no rows to test"):
        path.write_text(path.read_text().replace("lovely,pos,holdout", "lovely,pos,train"))
        prepare(path, DataConfig(path="given.csv", split_column="split"))
