"""The layer-importance probe: which encoder layers matter most for this data, measured once per job before the
search, so a space can ask for "the k most important layers" (`layers: {importance_top_k: ...}` for full,
LoRA and its relatives, and sparse) instead of guessing indices.

Measure: the mean squared gradient per weight of each encoder layer (the diagonal empirical Fisher
information, summed over the layer's weights and divided by their number), with every weight trainable, over
a few seeded training batches, model in eval mode (no dropout, so the probe is deterministic for a seed).
Layers are ranked by it, highest first; ties go to the lower layer. The ranking is written to
OUTPUT_DIR/search/layer_importance.json (a resumed job reads it back: its trials see the same ranking) and
logged with a bar chart on the job's MLflow run. It runs only when the space uses `importance_top_k`.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

PROBE_BATCHES = 4
PROBE_BATCH_SIZE = 16


def space_needs_ranking(space) -> bool:
    """Whether any method of a compiled space can draw `importance_top_k`."""
    return any(k.name.endswith(".importance_top_k") and not (k.kind == "fixed" and k.value is None)
               for knobs in space.methods.values() for k in knobs)


def rank_layers(model_cfg, labels: list[str], train: dict[str, Any], seed: int = 0,
                n_batches: int = PROBE_BATCHES, batch_size: int = PROBE_BATCH_SIZE) -> dict[str, Any]:
    """{"ranking": [layer, ...] most important first, "scores": per-layer mean squared gradient, ...}."""
    import torch

    from autotune.methods.base import encoder_layers
    from autotune.training.loop import batches
    from autotune.training.model import build_model

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(model_cfg, labels)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    layers = encoder_layers(model)
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    energy = [0.0] * len(layers)
    n = len(train["labels"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    used = 0
    for batch in itertools.islice(batches(train, batch_size, order), n_batches):
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for i, layer in enumerate(layers):
            energy[i] += sum(float(p.grad.pow(2).sum()) for p in layer.parameters() if p.grad is not None)
        used += 1
    scores = [e / max(1, s) / max(1, used) for e, s in zip(energy, sizes)]
    ranking = sorted(range(len(layers)), key=lambda i: (-scores[i], i))
    return {"ranking": ranking, "scores": scores, "batches": used, "batch_size": batch_size, "seed": seed,
            "measure": "mean squared gradient per weight of each encoder layer (empirical Fisher), all weights "
                       "trainable, eval mode", "seconds": round(time.perf_counter() - start, 2)}


def plot(probe: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = probe["scores"]
    top = set(probe["ranking"][: max(1, len(scores) // 2)])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(scores) + 2), 3.2))
    ax.bar(range(len(scores)), scores, color=["tab:red" if i in top else "tab:gray" for i in range(len(scores))])
    for rank, layer in enumerate(probe["ranking"], 1):
        ax.annotate(f"#{rank}", (layer, scores[layer]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(scores)))
    ax.set_xlabel("encoder layer (0 = bottom)")
    ax.set_ylabel("mean squared gradient per weight")
    ax.set_title(f"layer importance ({probe['batches']} batches of {probe['batch_size']}; red: top half)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def for_job(ctx, tokens: dict[str, dict[str, Any]]) -> list[int] | None:
    """The job's layer ranking when its space uses importance_top_k (computed once, then read back), else None."""
    if not space_needs_ranking(ctx.job.space):
        return None
    from autotune.pipeline.state import write_json_atomic

    path = ctx.out / "search" / "layer_importance.json"
    if path.is_file():
        probe = json.loads(path.read_text())
        ctx.console.print(f"layer importance: {_order(probe)} (from {path.name}, measured before)")
        return list(probe["ranking"])
    probe = rank_layers(ctx.job.config.model, ctx.results["preprocess"].labels, tokens["train"], ctx.job.config.seed)
    write_json_atomic(path, probe)
    ctx.console.print(f"layer importance ({probe['batches']} batches, {probe['seconds']:.1f} s): {_order(probe)}")
    try:
        png = plot(probe, ctx.out / "plots" / "layer_importance.png")
        ctx.tracker.log_artifact(ctx.parent_run_id, str(path), "search")
        ctx.tracker.log_artifact(ctx.parent_run_id, str(png), "search/plots")
    except Exception as exc:  # noqa: BLE001 - the plot is a convenience; the ranking is on disk
        ctx.console.print(f"[yellow]note: layer-importance plot not logged ({exc})[/]")
    return list(probe["ranking"])


def _order(probe: dict[str, Any]) -> str:
    return " > ".join(f"layer {i}" for i in probe["ranking"])
