"""Read a labelled text file, clean it (counting what was removed and why), map labels and make a
seeded stratified train/validation/test split. Pure Python + pandas; no torch.

Missing labels: an empty cell, a JSON null or NaN, and the text "NaN" in any case (what a float NaN becomes
when a table is written out as text) count as missing (`missing_label` in the cleaning report), never as
a class named "NaN". Other words ("NA", "None", "null") stay class names: they are real labels in some
data sets (a region, a severity)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from autotune.config.job import DataConfig
from autotune.errors import DataError


@dataclass
class CleaningReport:
    rows_read: int = 0
    empty_text: int = 0
    missing_label: int = 0
    duplicates: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    subsampled_out: int = 0
    rows_kept: int = 0


@dataclass
class PreparedData:
    splits: dict[str, list[tuple[str, int]]]  # split -> [(text, label_id)]
    labels: list[str]  # label_id -> name
    fingerprint: str
    cleaning: CleaningReport
    source: str
    stats: dict = field(default_factory=dict)


FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def format_of(path: Path) -> str | None:
    """File format by extension, or None when the extension says nothing we read."""
    return FORMATS.get(path.suffix.lower())


def read_table(path: Path, fmt: str, cfg: DataConfig):
    import pandas as pd

    if fmt == "auto":
        fmt = format_of(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if not stat.S_ISREG(mode):  # a FIFO would block, /dev/zero never ends
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or special file"
        raise DataError(f"{path}: must be a regular file (got {kind})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if fmt in ("csv", "jsonl"):
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DataError(
                f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                "re-save the file as UTF-8"
            ) from None
        del raw
    try:
        if fmt == "csv":
            df = pd.read_csv(path, dtype=object, keep_default_na=False, encoding="utf-8")
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            df = pd.read_parquet(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read as {fmt}: {str(exc).splitlines()[0]}") from None
    if df.empty:
        raise DataError(f"{path}: no rows")
    columns = (("text_column", cfg.text_column), ("label_column", cfg.label_column))
    if cfg.split_column is not None:
        columns += (("split_column", cfg.split_column),)
    for role, col in columns:
        if col not in df.columns:
            raise DataError(
                f"{path}: column {col!r} not found (data.{role}; the file has columns: {', '.join(map(str, df.columns))})"
            )
    return df


def prepare(path: Path, cfg: DataConfig, source_name: str | None = None) -> PreparedData:
    df = read_table(path, cfg.format, cfg)
    rep = CleaningReport(rows_read=len(df))
    texts = df[cfg.text_column].tolist()
    labels_raw = df[cfg.label_column].tolist()
    given = _given_splits(df, cfg, path) if cfg.split_column is not None else [None] * len(texts)

    rows: list[tuple[str, str]] = []
    row_split: list[str | None] = []
    seen: set[str] = set()
    for text, label, split_name in zip(texts, labels_raw, given):
        if _missing_label(label):
            rep.missing_label += 1
            continue
        text = "" if text is None or (isinstance(text, float) and text != text) else str(text).strip()
        if not text:
            rep.empty_text += 1
            continue
        if cfg.max_chars is not None and len(text) > cfg.max_chars:
            if cfg.too_long == "drop":
                rep.dropped_too_long += 1
                continue
            text = text[: cfg.max_chars]
            rep.truncated += 1
        if cfg.dedupe:
            if text in seen:
                rep.duplicates += 1
                continue
            seen.add(text)
        rows.append((text, _label_name(label)))
        row_split.append(split_name)

    counts = Counter(label for _, label in rows)
    if len(counts) < 2:
        raise DataError(
            f"{path}: column {cfg.label_column!r} must hold at least 2 classes after cleaning (got {len(counts)}: {_some(counts)})"
        )
    rng = random.Random(cfg.split.seed)
    if cfg.split_column is not None:
        return _prepared_as_given(path, rows, row_split, counts, rep, source_name)
    if cfg.max_examples is not None and len(rows) > cfg.max_examples:
        rows = _stratified_sample(rows, cfg.max_examples, rng)
        rep.subsampled_out = sum(counts.values()) - len(rows)
        counts = Counter(label for _, label in rows)
    smallest = min(cfg.split.train, cfg.split.validation, cfg.split.test)
    need = max(3, int(1 / smallest + 0.999))
    too_few = {k: v for k, v in counts.items() if v < need}
    if too_few:
        raise DataError(
            f"{path}: every class needs at least {need} examples for the split "
            f"{cfg.split.train}/{cfg.split.validation}/{cfg.split.test} (too few: {_some(too_few)}"
            f"{f'; {len(too_few)} of {len(counts)} classes' if len(too_few) > 10 else ''})"
        )
    rep.rows_kept = len(rows)
    names = sorted(counts, key=_label_sort_key)
    index = {n: i for i, n in enumerate(names)}
    splits = _stratified_split([(t, index[l]) for t, l in rows], cfg, rng)
    return _prepared(path, splits, names, rep, source_name)


def _missing_label(label) -> bool:
    """An empty cell, null, a float NaN or the text "NaN" (any case, any sign): see the module docstring."""
    if label is None or (isinstance(label, float) and label != label):
        return True
    if isinstance(label, str):
        text = label.strip().lower()
        return not text or text.lstrip("+-") == "nan"
    return False


def _some(counts: dict, n: int = 10) -> str:
    """At most n entries of a label -> count mapping, each label cut to 50 characters: a file with 100k
    distinct labels must not make a megabyte-long message."""
    items = [f"{str(k)[:50]!r}: {v}" for k, v in list(counts.items())[:n]]
    return "{" + ", ".join(items) + (f", ... ({len(counts) - n} more)" if len(counts) > n else "") + "}"


def _label_name(label) -> str:
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    return str(label).strip()


def _label_sort_key(name: str):
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def _stratified_sample(rows, n, rng):
    by_class: dict[str, list] = {}
    for r in rows:
        by_class.setdefault(r[1], []).append(r)
    out = []
    total = len(rows)
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        out += items[: max(1, round(len(items) * n / total))]
    rng.shuffle(out)
    return out


SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
               "valid": "validation", "dev": "validation", "test": "test", "testing": "test"}


def _given_splits(df, cfg: DataConfig, path: Path) -> list[str]:
    """The split of every row from data.split_column; unknown names are an error naming the first rows."""
    out, bad = [], []
    for i, value in enumerate(df[cfg.split_column].tolist()):
        name = SPLIT_NAMES.get(str(value).strip().lower())
        if name is None:
            bad.append((i + 2, value))  # +2: header line, 1-based
        out.append(name)
    if bad:
        shown = ", ".join(f"line {line}: {str(v)[:40]!r}" for line, v in bad[:5])
        raise DataError(f"{path}: column {cfg.split_column!r} (data.split_column) must say train, validation or "
                        f"test in every row (got {shown}{f' and {len(bad) - 5} more' if len(bad) > 5 else ''})")
    return out


def _prepared(path: Path, splits, names, rep: CleaningReport, source_name) -> "PreparedData":
    """The prepared data set: splits, label names, a fingerprint of both, the cleaning report and a profile."""
    h = hashlib.sha256()
    for split in ("train", "validation", "test"):
        for text, label in splits[split]:
            h.update(f"{split}\t{label}\t{text}\n".encode())
    h.update(json.dumps(names).encode())
    data = PreparedData(splits, names, h.hexdigest()[:16], rep, source_name or str(path))
    data.stats = profile(data)
    return data


def _prepared_as_given(path: Path, rows, row_split, counts, rep: CleaningReport, source_name) -> "PreparedData":
    """The file's own split, as it is, in file order."""
    names = sorted(counts, key=_label_sort_key)
    index = {n: i for i, n in enumerate(names)}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "validation": [], "test": []}
    for (text, label), split in zip(rows, row_split):
        splits[split].append((text, index[label]))
    empty = [k for k, v in splits.items() if not v]
    if empty:
        raise DataError(f"{path}: data.split_column gives no rows to {', '.join(empty)} after cleaning")
    rep.rows_kept = len(rows)
    return _prepared(path, splits, names, rep, source_name)


def _stratified_split(rows, cfg: DataConfig, rng) -> dict[str, list[tuple[str, int]]]:
    by_class: dict[int, list] = {}
    for r in rows:
        by_class.setdefault(r[1], []).append(r)
    out = {"train": [], "validation": [], "test": []}
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        n = len(items)
        n_val = max(1, round(n * cfg.split.validation))
        n_test = max(1, round(n * cfg.split.test))
        out["validation"] += items[:n_val]
        out["test"] += items[n_val : n_val + n_test]
        out["train"] += items[n_val + n_test :]
    for split in out.values():
        rng.shuffle(split)
    return out


def profile(data: PreparedData) -> dict:
    """Sizes, class balance per split and the length distribution (words)."""
    stats: dict = {"sizes": {k: len(v) for k, v in data.splits.items()}, "labels": data.labels, "class_counts": {}}
    for split, rows in data.splits.items():
        c = Counter(label for _, label in rows)
        stats["class_counts"][split] = {data.labels[i]: c.get(i, 0) for i in range(len(data.labels))}
    lengths = sorted(len(t.split()) for rows in data.splits.values() for t, _ in rows)
    q = lambda p: lengths[min(len(lengths) - 1, int(p * len(lengths)))]  # noqa: E731
    stats["words"] = {"min": lengths[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": lengths[-1]}
    train = stats["class_counts"]["train"]
    stats["majority_fraction_test"] = max(
        Counter(label for _, label in data.splits["test"]).values()
    ) / max(1, len(data.splits["test"]))
    stats["majority_label"] = max(train, key=train.get)
    return stats
