"""Study plots for the parent run: optimisation history by method, and quality vs trainable parameters
(the trade-off a user picks a method by). PNG via matplotlib, plus an HTML page embedding them."""

from __future__ import annotations

import base64
from pathlib import Path

def colour(method: str) -> str:
    """A method's colour in every plot: its place in the registry (built-ins first, plugins after) on a
    10-colour cycle, so a new method needs no entry here."""
    from autotune.methods import REGISTRY

    names = list(REGISTRY)
    return f"C{names.index(method) % 10}" if method in names else "gray"


MARKERS = {"finished": "o", "pruned": "x", "failed": "v"}


def study_plots(ctx, result) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objective = ctx.job.config.objective
    metric = objective.metric
    rows = [r for r in result.trials if metric in r.metrics]
    out = ctx.out / "plots"
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.2))
    best_so_far, best = [], None
    for r in sorted(rows, key=lambda r: r.number):
        v = r.metrics[metric]
        best = v if best is None else (max(best, v) if ctx.job.config.objective.mode == "max" else min(best, v))
        best_so_far.append((r.number, best))
        kw = dict(color=colour(r.method), marker=MARKERS.get(r.status, "o"))
        ax1.scatter(r.number, v, **kw)
    trade_off = objective.trade_off or "trainable_params"
    _trade_off_panel(ax2, result, metric, objective.mode, trade_off, multi=objective.multi)
    if best_so_far:
        ax1.step(*zip(*best_so_far), where="post", color="black", lw=1, label="best so far")
    for m in sorted({r.method for r in rows}):
        ax1.scatter([], [], color=colour(m), label=m)
    for s, mk in MARKERS.items():
        ax1.scatter([], [], color="gray", marker=mk, label=s)
    ax1.set_xlabel("trial")
    ax1.set_ylabel(metric)
    ax1.set_title("optimisation history")
    ax1.legend(fontsize=7, ncol=2)
    _importances(ax3, ctx, result)
    fig.tight_layout()
    png = out / "study.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    html = out / "study.html"
    data = base64.b64encode(png.read_bytes()).decode()
    table = "".join(
        f"<tr><td>{r.number}</td><td>{r.method}</td><td>{r.status}</td><td>{r.metrics.get(metric, float('nan')):.4f}</td>"
        f"<td>{int(r.metrics.get('trainable_params', 0)):,}</td><td>{' '.join(f'{k}={v}' for k, v in r.knobs.items())}</td></tr>"
        for r in sorted(result.trials, key=lambda r: r.number)
    )
    html.write_text(
        f"<html><head><meta charset='utf-8'><title>{ctx.job.config.name} study</title></head><body>"
        f"<h1>{ctx.job.config.name}</h1><img src='data:image/png;base64,{data}'/>"
        f"<table border=1 cellpadding=4><tr><th>trial</th><th>method</th><th>status</th><th>{metric}</th>"
        f"<th>trainable</th><th>knobs</th></tr>{table}</table></body></html>"
    )
    return [png, html]


TRADE_OFF_LABELS = {"trainable_params": "trainable parameters", "optimizer_state_bytes": "optimizer state bytes",
                    "seconds": "training seconds to the rung"}


def _trade_off_panel(ax, result, metric: str, mode: str, trade_off: str, multi: bool) -> None:
    """Quality vs the trade-off, one point per trial at its best rung (the candidate the pick rule compares): the
    Pareto front as a step line, a multi-objective job's deployed pick starred."""
    rows = [r for r in result.trials if r.status != "failed" and metric in r.best and trade_off in r.best]
    for r in rows:
        ax.scatter(max(1e-3, r.best[trade_off]), r.best[metric], color=colour(r.method),
                   marker=MARKERS.get(r.status, "o"))
    front = pareto_front([(max(1e-3, r.best[trade_off]), r.best[metric]) for r in rows], maximize=mode == "max")
    if front:
        ax.step(*zip(*front), where="post", color="black", lw=1, label="Pareto front")
    if multi:
        pick = [r for r in rows if r.number == result.best_number]
        if pick:
            ax.scatter(max(1e-3, pick[0].best[trade_off]), pick[0].best[metric], marker="*", s=260,
                       facecolors="none", edgecolors="black", linewidths=1.2, label=f"deployed: trial {pick[0].number}")
    if front:
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    label = TRADE_OFF_LABELS.get(trade_off, trade_off)
    ax.set_xlabel(f"{label} (log)")
    ax.set_ylabel(f"{metric} (best rung)")
    ax.set_title(f"quality vs {label}")


def pareto_front(points: list[tuple[float, float]], maximize: bool = True) -> list[tuple[float, float]]:
    """Points not beaten by any point with fewer (or equal) trainable parameters, sorted by parameters."""
    front, best = [], None
    for params, value in sorted(points, key=lambda p: (p[0], -p[1] if maximize else p[1])):
        if best is None or (value > best if maximize else value < best):
            front.append((params, value))
            best = value
    return front


def method_importances(storage_url: str, study_name: str, direction: str, min_trials: int = 3) -> dict[str, dict[str, float]]:
    """fANOVA importances of each method's knobs, from that method's complete trials (the space is
    conditional: importances across methods would compare knobs that never co-occur)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, dict[str, float]] = {}
    for method in sorted({t.params.get("method") for t in done}):
        trials = [t for t in done if t.params.get("method") == method]
        knobs = sorted({k for t in trials for k in t.params if k != "method" and len({u.params.get(k) for u in trials}) > 1})
        if len(trials) < min_trials or not knobs:
            continue
        if len(study.directions) > 1:  # multi-objective: importances for the first objective (the metric)
            sub = optuna.create_study(directions=study.directions)
            sub.add_trials(trials)
            out[method] = optuna.importance.get_param_importances(sub, params=knobs, target=lambda t: t.values[0])
            continue
        sub = optuna.create_study(direction=direction)
        sub.add_trials(trials)
        out[method] = optuna.importance.get_param_importances(sub, params=knobs)
    return out


def _importances(ax, ctx, result) -> None:
    from autotune.search.tuner import optuna_storage_url

    direction = "maximize" if ctx.job.config.objective.mode == "max" else "minimize"
    try:
        imp = method_importances(optuna_storage_url(ctx.job), result.study_name, direction)
    except Exception as exc:  # noqa: BLE001 - too few trials, a degenerate space...
        imp, note = {}, f"not computed: {type(exc).__name__}"
    else:
        note = "needs >= 3 complete trials of a method with a varying knob"
    labels, values, colours = [], [], []
    for method, scores in imp.items():
        for knob, v in scores.items():
            labels.append(knob)
            values.append(v)
            colours.append(colour(method))
    if labels:
        ax.barh(labels, values, color=colours)
        ax.invert_yaxis()
        ax.set_xlabel("importance (fANOVA, within each method)")
    else:
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=8, wrap=True)
        ax.set_axis_off()
    ax.set_title("parameter importances")
