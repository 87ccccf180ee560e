"""Data drift report of a retuning cycle: label, length, vocabulary and embedding drift, the thresholds that
widen a search, the metrics and plot it logs, and the base-encoder embedder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autotune.retune.drift import DriftThresholds, drift_plot, drift_report, embedder
from tests.conftest import synthetic_rows

T = DriftThresholds()


def char_counts(texts: list[str]) -> np.ndarray:
    """A real (deterministic) embedding: normalised bag-of-characters over a-z, space and digits."""
    alphabet = "abcdefghijklmnopqrstuvwxyz 0123456789"
    out = np.zeros((len(texts), len(alphabet)))
    for i, text in enumerate(texts):
        for ch in text.lower():
            j = alphabet.find(ch)
            if j >= 0:
                out[i, j] += 1
    return out / np.maximum(out.sum(1, keepdims=True), 1)


def test_identical_data_shows_no_drift():
    rows = synthetic_rows(60)
    r = drift_report(rows, list(rows))
    assert (r.label_tv, r.length_ks, r.oov_rate, r.label_chi2, r.label_chi2_p) == (0, 0, 0, 0, 1.0)
    assert r.new_labels == [] and r.exceeded(T) == []
    assert r.embedding_mmd is None and "drift.embedding_mmd" not in r.metrics()
    assert r.n_reference == r.n_current == 60


def test_shifted_label_shares_give_the_hand_computed_total_variation():
    ref = [(f"text {i}", "a" if i < 5 else "b") for i in range(10)]  # a 0.5, b 0.5
    cur = [(f"text {i}", "a" if i < 8 else "b") for i in range(10)]  # a 0.8, b 0.2
    r = drift_report(ref, cur)
    assert r.label_tv == pytest.approx(0.3)
    assert r.label_share_reference == {"a": 0.5, "b": 0.5}
    assert r.label_share_current == pytest.approx({"a": 0.8, "b": 0.2})
    assert r.label_chi2 > 0 and 0 < r.label_chi2_p < 1
    assert r.exceeded(T) == ["label distribution moved: total variation 0.30 > 0.15"]
    assert r.exceeded(DriftThresholds(label_tv=0.31)) == []


def test_new_label_is_reported_and_always_a_reason():
    ref = [("x", "a"), ("y", "b")] * 20
    cur = ref[:-2] + [("x", "c"), ("y", "c")]
    r = drift_report(ref, cur)
    assert r.new_labels == ["c"] and r.label_share_reference["c"] == 0
    assert r.exceeded(DriftThresholds(label_tv=1.0)) == ["new labels in current data: c"]
    assert "new labels c" in r.summary()


def test_single_label_on_both_sides_has_chi2_zero_p_one():
    r = drift_report([("a b", "x")] * 3, [("c d e", "x")] * 5)
    assert (r.label_chi2, r.label_chi2_p, r.label_tv) == (0.0, 1.0, 0.0)


def test_longer_texts_give_a_large_ks():
    ref = [(" ".join(["word"] * (3 + i % 3)), "a") for i in range(30)]
    cur = [(" ".join(["word"] * (30 + i % 3)), "a") for i in range(30)]
    r = drift_report(ref, cur)
    assert r.length_ks == 1.0 and r.length_mean_reference == 4 and r.length_mean_current == 31
    assert r.oov_rate == 0
    assert r.exceeded(T) == ["text length moved: KS 1.00 > 0.25 (mean 4.0 -> 31.0 words)"]


def test_unseen_vocabulary_gives_the_hand_computed_oov_rate():
    ref = [("The cat sat there.", "a"), ("a cat's toy", "b")]
    cur = [("the DOG sat, down!", "a"), ("A cat's bone", "b")]  # the dog sat down | a cat's bone: 3 of 7 unseen
    r = drift_report(ref, cur)
    assert r.oov_rate == pytest.approx(3 / 7)
    assert r.exceeded(T) == ["vocabulary moved: 42.9% of current tokens unseen in reference > 25%"]


def test_embedding_mmd_same_distribution_is_not_significant():
    ref, cur = synthetic_rows(120, seed=1), synthetic_rows(120, seed=2)
    r = drift_report(ref, cur, embed=char_counts, sample=64, seed=0)
    assert r.embedding_p > 0.05
    assert not any(reason.startswith("embeddings") for reason in r.exceeded(T))
    assert r == drift_report(ref, cur, embed=char_counts, sample=64, seed=0)  # deterministic given seed


def test_embedding_mmd_different_texts_is_significant_and_exceeds():
    ref = synthetic_rows(120)
    cur = [(f"zq{i} xyzzy 42{i} kvx qzj", lab) for i, (_, lab) in enumerate(ref)]
    r = drift_report(ref, cur, embed=char_counts, sample=64, permutations=100, seed=3)
    assert r.embedding_p < 0.05 and r.embedding_mmd > T.embedding_mmd
    assert r.embedding_p == pytest.approx(1 / 101)
    assert any(reason.startswith("embeddings moved: MMD") for reason in r.exceeded(T))
    m = r.metrics()
    assert m["drift.embedding_mmd"] == r.embedding_mmd and m["drift.embedding_p"] == r.embedding_p


def test_embed_is_called_on_a_seeded_sample_of_at_most_sample_texts():
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return char_counts(texts)

    rows = synthetic_rows(50)
    drift_report(rows, rows[:3], embed=embed, sample=10, seed=7)
    assert [len(c) for c in calls] == [10, 3]
    assert len(set(calls[0])) == 10 and set(calls[0]) <= {t for t, _ in rows}
    first = calls[0]
    calls.clear()
    drift_report(rows, rows[:3], embed=embed, sample=10, seed=7)
    assert calls[0] == first


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="reference data is empty"):
        drift_report([], [("a", "x")])
    with pytest.raises(ValueError, match="current data is empty"):
        drift_report([("a", "x")], [])
    with pytest.raises(ValueError, match="shape"):
        drift_report([("a", "x")] * 3, [("b", "x")] * 3, embed=lambda texts: np.zeros(len(texts)))


def test_metrics_summary_and_dict_are_flat_and_json_safe():
    ref = [("a b c", "x"), ("d e", "y")] * 5
    r = drift_report(ref, ref[:6] + [("f g h i", "y")], embed=char_counts)
    assert set(r.metrics()) == {f"drift.{k}" for k in (
        "label_tv", "label_chi2_p", "length_ks", "oov_rate", "embedding_mmd", "embedding_p",
        "length_mean_reference", "length_mean_current", "n_reference", "n_current")}
    assert all(isinstance(v, float) for v in r.metrics().values())
    assert json.loads(json.dumps(r.to_dict()))["n_current"] == 7
    s = r.summary()
    assert s.startswith("labels TV ") and "words (KS " in s and "OOV " in s and "embeddings MMD " in s


def test_embedder_returns_mean_pooled_base_encoder_rows(tiny_model_dir):
    from autotune.config.job import ModelConfig

    embed = embedder(ModelConfig(name_or_path=str(tiny_model_dir), max_length=16), batch_size=2)
    texts = ["the movie was good", "the movie was good", "awful " * 50, "a"]
    out = embed(texts)
    assert out.shape == (4, 32) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(embed(texts), out, atol=1e-6)  # eval mode: no dropout noise
    assert not np.allclose(out[0], out[3])
    assert embed([]).shape == (0, 32)


def test_drift_plot_writes_a_png(tmp_path):
    r = drift_report(synthetic_rows(40), synthetic_rows(30, seed=5) + [("new one", "neutral")])
    path = drift_plot(r, tmp_path / "nested" / "drift.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
