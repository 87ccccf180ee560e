"""`autotune suggest-space JOB.yaml`: a starting search space from the job's data, model and budget.

Three kinds of facts go in (`gather`):

- the data, read, cleaned and split exactly as the preprocess stage does it: training rows, classes, class
  balance, and tokens per row with the job's tokenizer (median / p95, the share cut at model.max_length);
- the model, without loading its weights: encoder layers and sizes from config.json, the parameter count from
  the safetensors headers (shapes only), cut to model.num_hidden_layers as `build_model` cuts it;
- the budget: budget.num_trials / wall_clock_s / time_budget_s, trials at once, the CPUs of this machine and
  whether CUDA (and bitsandbytes) is there.

Rules of thumb turn them into a space (`advise`), and every choice is written with the numbers that triggered
it as a YAML comment next to it (`render`). The result is checked with the same `compile_space` that
`search.space: FILE` goes through before it is returned.

Cost estimates are deliberately rough: training FLOPs per example (6 x non-embedding parameters x tokens,
plus attention) divided by a CPU rate calibrated on docs/benchmarks.md ("Training throughput in a trial":
full fine-tuning of the 3-layer MiniLM at 34.8 examples/s on one thread, Rotten Tomatoes rows, mean 27.6
tokens) and per-method relative costs from the same table. They decide only between "fits" and "does not fit".
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from autotune.config.errors import show
from autotune.errors import ConfigError, DataError

# ---- thresholds (each one is quoted, with the value that crossed it, in the written space) --------------------
SMALL_ROWS = 500  # fewer training rows: zero_shot / head / bitfit / sparse, no full fine-tuning
FEW_PER_CLASS = 20  # fewer training rows per class counts as little data too
FULL_MIN_ROWS = 500  # full fine-tuning was the best of 9 candidates at 658 training rows (benchmarks, round 2)
FULL_MIN_EPOCHS = 3  # "compute allows full": the search time holds this many full epochs on one trial slot
MANY_CLASSES = 20
IMBALANCED = 5.0  # majority / minority class rows in the training split
LONG_TOKENS = 128  # tokens per row (p95, after truncation) from which batches shrink
QLORA_MIN_PARAMS = 100e6  # below, a 4-bit base saves little memory and costs dequantization in every product
SAMPLE_ROWS = 20_000  # rows tokenized for the length statistics

# ---- cost model ------------------------------------------------------------------------------------------------
_BENCH_LAYER = 4 * 384 * 384 + 2 * 384 * 1536 + 9 * 384 + 1536  # one MiniLM layer: 1,774,464 parameters
_BENCH_TOKENS = 27.6
_BENCH_FLOPS = 6 * 3 * _BENCH_LAYER * _BENCH_TOKENS + 12 * 3 * 384 * _BENCH_TOKENS ** 2
CPU_FLOPS_PER_THREAD = 34.8 * _BENCH_FLOPS  # ~31 GFLOP/s: measured under load, so on the slow side
GPU_FLOPS = 5e12  # a guess for fp32 training of small encoders on one GPU (small batches); not measured here
START_UP_S = 25.0  # before the first trial (imports, preprocessing, Ray): docs/benchmarks.md, 150-s runs
AFTER_SEARCH_S = 35.0  # validate + deploy in the same runs
# examples/s of a method relative to full fine-tuning (docs/benchmarks.md throughput table: full 34.8, lora 101.8,
# sparse 84.2; head trains on cached encoder features); the untested ones are set like LoRA
RELATIVE_COST = {"full": 1.0, "lora": 0.35, "qlora": 0.5, "sparse": 0.41, "head": 0.02, "bitfit": 0.35,
                 "ln_tuning": 0.35, "ia3": 0.35, "adalora": 0.4, "vera": 0.4, "loha": 0.4, "lokr": 0.4, "zero_shot": 0.0}

# learning-rate centres as multiples of full fine-tuning's (wide.yaml's ranges, whose centres sit at these ratios)
LR_FACTOR = {"lora": 10.0, "qlora": 10.0, "adalora": 10.0, "sparse": 8.0, "bitfit": 25.0, "ln_tuning": 25.0,
             "ia3": 80.0, "loha": 60.0, "lokr": 60.0, "vera": 150.0}

BERT_LIKE = {"bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "minilm"}


# ---- facts ------------------------------------------------------------------------------------------------------

@dataclass
class DataFacts:
    source: str
    train_rows: int
    rows_kept: int
    class_counts: dict[str, int]  # training split
    tokens_median: int
    tokens_p95: int
    tokens_mean: float  # after truncation at max_length: what a batch costs
    truncated_share: float
    max_length: int
    split: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.class_counts)

    @property
    def imbalance(self) -> float:
        counts = [c for c in self.class_counts.values()]
        return max(counts) / max(1, min(counts))


@dataclass
class ModelFacts:
    name: str
    model_type: str
    layers_total: int
    layers: int  # kept (model.num_hidden_layers)
    hidden: int
    params: int  # with `layers` layers, no pooler
    params_all: int
    per_layer: int
    counted_from: str

    @property
    def bert_like(self) -> bool:
        return self.model_type in BERT_LIKE


@dataclass
class BudgetFacts:
    num_trials: int | None
    wall_clock_s: float | None
    time_budget_s: float | None
    max_concurrent: int
    cpu_per_trial: float
    gpu_per_trial: float
    cpus: int
    cuda: bool
    cuda_how: str  # "detected", "--cuda", "--no-cuda", "not detected"
    bitsandbytes: bool
    gpu_count: int = 1

    @property
    def on_gpu(self) -> bool:
        """Trials train on a GPU: CUDA is there and the job gives each trial (a share of) one."""
        return self.cuda and self.gpu_per_trial > 0

    @property
    def slots(self) -> int:
        if self.on_gpu:
            return max(1, min(self.max_concurrent, int(max(1, self.gpu_count) / self.gpu_per_trial)))
        return max(1, min(self.max_concurrent, int(self.cpus // max(1.0, self.cpu_per_trial)) or 1))

    @property
    def search_s(self) -> float | None:
        """Seconds the search gets: time_budget_s, or wall_clock_s less start-up and validate + deploy."""
        options = []
        if self.time_budget_s:
            options.append(self.time_budget_s)
        if self.wall_clock_s:
            options.append(max(self.wall_clock_s - START_UP_S - AFTER_SEARCH_S, 0.3 * self.wall_clock_s))
        return min(options) if options else None

    @property
    def flops_per_trial(self) -> float:
        if self.on_gpu:
            return GPU_FLOPS * min(1.0, self.gpu_per_trial)
        threads = max(1.0, self.cpu_per_trial)
        return CPU_FLOPS_PER_THREAD * threads ** 0.85  # threads scale sub-linearly


@dataclass
class Knob:
    name: str
    value: Any
    why: str = ""


@dataclass
class MethodPlan:
    name: str
    why: str
    knobs: list[Knob] = field(default_factory=list)

    def add(self, name: str, value: Any, why: str = "") -> None:
        self.knobs.append(Knob(name, value, why))


@dataclass
class Advice:
    header: list[str]
    methods: list[MethodPlan]
    left_out: list[tuple[str, str]]
    portfolio: list[dict]
    portfolio_note: str
    description: str


# ---- gathering --------------------------------------------------------------------------------------------------

def load_job_settings(job_path: str | Path):
    """The job's settings and its data file, checked as `autotune validate` checks them - except the search
    space, which is what this command replaces (a job whose space does not validate can still get advice).
    Returns (JobConfig, data path or None)."""
    from autotune.config.loader import _capped, _merge, data_path_problems, read_job_config

    path = Path(job_path)
    try:
        config, issues, problems = read_job_config(path)
        data_path, data_problems = data_path_problems(config, path)
        problems += data_problems
        if problems or issues:
            raise ConfigError(_merge(issues, problems, str(path)))
    except ConfigError as exc:
        raise _capped(exc) from None
    return config, data_path


def data_facts(config, data_path: Path | None, src: str) -> DataFacts:
    """Read, clean and split the data as the preprocess stage does; token lengths of the training rows."""
    import statistics

    from autotune.pipeline.preprocess import prepare_job_data

    data = prepare_job_data(SimpleNamespace(config=config, data_path=data_path))
    train = data.splits["train"]
    counts = {data.labels[i]: 0 for i in range(len(data.labels))}
    for _, label in train:
        counts[data.labels[label]] += 1
    texts = [t for t, _ in train]
    if len(texts) > SAMPLE_ROWS:
        import random

        texts = random.Random(0).sample(texts, SAMPLE_ROWS)
    tokenizer = _tokenizer(config.model, src)
    lengths = sorted(len(ids) for ids in tokenizer([t[:20_000] for t in texts], truncation=False)["input_ids"])
    max_len = config.model.max_length
    split = config.data.split
    how = (f"the file's own split (data.split_column {config.data.split_column})" if config.data.split_column
           else f"split {split.train:g} / {split.validation:g} / {split.test:g}")
    return DataFacts(
        source=data.source, train_rows=len(train), rows_kept=data.cleaning.rows_kept, class_counts=counts,
        tokens_median=lengths[len(lengths) // 2], tokens_p95=lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
        tokens_mean=statistics.fmean(min(n, max_len) for n in lengths),
        truncated_share=sum(n > max_len for n in lengths) / len(lengths), max_length=max_len, split=how)


def _tokenizer(model_cfg, src: str):
    from autotune.training.model import load_tokenizer

    try:
        return load_tokenizer(model_cfg)
    except ImportError as exc:
        raise ConfigError([f"{src}: model.name_or_path: the packaged model is not installed ({exc})"]) from None
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{src}: model.name_or_path: cannot load its tokenizer "
                           f"(got {show(model_cfg.name_or_path)}: {str(exc).splitlines()[0][:200]})"]) from None


def model_facts(model_cfg, src: str) -> ModelFacts:
    """Layers and parameters of the encoder from config.json and the safetensors headers; no weights are read."""
    from autotune.training.model import resolve_model_path

    try:
        where = Path(resolve_model_path(model_cfg.name_or_path))
    except ImportError as exc:
        raise ConfigError([f"{src}: model.name_or_path: the packaged model is not installed ({exc})"]) from None
    if where.is_dir():
        try:
            cfg = json.loads((where / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError([f"{src}: model.name_or_path: cannot read {where / 'config.json'} "
                               f"({getattr(exc, 'strerror', None) or exc})"]) from None
    else:
        try:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(str(where)).to_dict()
        except Exception as exc:  # noqa: BLE001 - a hub id that cannot be resolved offline, a typo
            raise ConfigError([f"{src}: model.name_or_path: not a model directory and its config cannot be "
                               f"fetched (got {show(model_cfg.name_or_path)}: {str(exc).splitlines()[0][:200]})"]) from None
    if not isinstance(cfg, dict):
        raise ConfigError([f"{src}: model.name_or_path: config.json must be a JSON object"])
    h = int(cfg.get("hidden_size") or cfg.get("dim") or 0)
    inter = int(cfg.get("intermediate_size") or cfg.get("hidden_dim") or 4 * h)
    total = int(cfg.get("num_hidden_layers") or cfg.get("n_layers") or 0)
    if h <= 0 or total <= 0:
        raise ConfigError([f"{src}: model.name_or_path: config.json names no hidden_size / num_hidden_layers "
                           f"(got model_type {show(cfg.get('model_type'))})"])
    kept = min(model_cfg.num_hidden_layers or total, total)
    shapes = _safetensors_shapes(where) if where.is_dir() else {}
    if shapes:
        base, layer_sums = 0, {}
        for name, shape in shapes.items():
            if name.endswith("position_ids") or "pooler" in name or name.startswith("cls."):
                continue
            m = re.search(r"(?:^|\.)(?:layer|layers)\.(\d+)\.", name)
            n = math.prod(shape)
            if m:
                layer_sums[int(m.group(1))] = layer_sums.get(int(m.group(1)), 0) + n
            else:
                base += n
        per_layer = round(sum(layer_sums.values()) / max(1, len(layer_sums)))
        params_all = base + sum(layer_sums.values())
        params = base + sum(v for i, v in layer_sums.items() if i < kept)
        counted = "safetensors headers, shapes only; no weights loaded"
    else:
        vocab = int(cfg.get("vocab_size") or 30522)
        emb = (vocab + int(cfg.get("max_position_embeddings") or 512) + int(cfg.get("type_vocab_size") or 0)) * h + 2 * h
        per_layer = 4 * h * h + 2 * h * inter + 9 * h + inter
        params_all, params = emb + total * per_layer, emb + kept * per_layer
        counted = "config.json, a BERT-shaped estimate"
    return ModelFacts(model_cfg.name_or_path, str(cfg.get("model_type") or "?"), total, kept, h, params, params_all,
                      per_layer, counted)


def _safetensors_shapes(folder: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with file.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > 100 << 20:
                    return {}
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            return {}
        for name, info in header.items():
            if name != "__metadata__" and isinstance(info, dict) and "shape" in info:
                shapes[name] = info["shape"]
    return shapes


def budget_facts(config, cuda: bool | None = None) -> BudgetFacts:
    """The job's budget and this machine; `cuda` (the --cuda / --no-cuda flags) overrides the detection and
    then stands for "a CUDA GPU with bitsandbytes" (plan for another machine)."""
    import importlib.util

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    gpus = 0
    if cuda is None:
        try:
            import torch

            detected = torch.cuda.is_available()
            gpus = torch.cuda.device_count() if detected else 0
        except ImportError:  # pragma: no cover - torch is a dependency
            detected = False
        how, bnb = ("detected" if detected else "not detected"), importlib.util.find_spec("bitsandbytes") is not None
    else:
        detected, how, bnb, gpus = cuda, ("--cuda" if cuda else "--no-cuda"), cuda, (1 if cuda else 0)
    b = config.budget
    return BudgetFacts(b.num_trials, b.wall_clock_s, b.time_budget_s, b.max_concurrent_trials,
                       b.resources_per_trial.cpu, b.resources_per_trial.gpu, cpus, detected, how, bnb, max(1, gpus))


# ---- advice -----------------------------------------------------------------------------------------------------

def flops_per_example(model: ModelFacts, tokens: float) -> float:
    """Training FLOPs of one example through every kept layer (forward + backward)."""
    return 6 * model.layers * model.per_layer * tokens + 12 * model.layers * model.hidden * tokens ** 2


def epoch_seconds(method: str, data: DataFacts, model: ModelFacts, budget: BudgetFacts) -> float:
    full = data.train_rows * flops_per_example(model, data.tokens_mean) / budget.flops_per_trial
    return full * RELATIVE_COST.get(method, 0.4)


def _sig(x: float, digits: int = 2) -> float:
    return float(f"{x:.{digits - 1}e}")


def _lr_range(centre: float, decades: float) -> dict:
    half = 10 ** (decades / 2)
    return {"low": _sig(centre / half), "high": min(1.0, _sig(centre * half)), "log": True}


def _dur(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s" if s >= 1 else f"{s:.2f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _params(n: float) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def trial_capacity(data: DataFacts, model: ModelFacts, budget: BudgetFacts) -> tuple[int, str]:
    """How many trials the budget holds, and how that was found."""
    fit = None
    if budget.search_s is not None:
        typical = 10.0 + 2 * epoch_seconds("lora", data, model, budget)
        fit = max(1, min(1000, int(budget.slots * budget.search_s / typical)))
        fit_text = (f"~{fit} trials fit: {budget.slots} at once x {_dur(budget.search_s)} of search / "
                    f"~{_dur(typical)} per typical trial (2 LoRA epochs + 10 s)")
    if budget.num_trials is not None:
        if fit is not None and fit < budget.num_trials:
            return fit, f"budget.num_trials {budget.num_trials}, but only {fit_text}"
        return budget.num_trials, f"budget.num_trials {budget.num_trials}"
    if fit is not None:
        return fit, fit_text
    return 8, "no num_trials and no time budget: 8 trials (the job's default)"


def advise(config, data: DataFacts, model: ModelFacts, budget: BudgetFacts) -> Advice:
    from autotune.config.job import PACKAGED_MODEL

    rows, classes = data.train_rows, data.n_classes
    per_class = rows / max(1, classes)
    n_trials, n_how = trial_capacity(data, model, budget)
    level = 0 if n_trials < 16 else 1 if n_trials < 48 else 2
    level_name = ("narrow", "wider", "widest")[level]
    decades = (1.0, 1.3, 1.6)[level]  # learning-rate ranges: wider with more trials, never far past wide.yaml's
    search_s = budget.search_s
    full_epoch = epoch_seconds("full", data, model, budget)
    per_trial = f"{'a GPU' if budget.on_gpu else f'{budget.cpu_per_trial:g} CPU thread(s)'} per trial"
    hw = f"{per_trial}, {budget.slots} trial(s) at once"

    small_rows = rows < SMALL_ROWS
    few_per_class = per_class < FEW_PER_CLASS
    small = small_rows or few_per_class
    small_why = (f"{_n(rows)} training rows < {SMALL_ROWS}" if small_rows
                 else f"{per_class:.1f} training rows per class < {FEW_PER_CLASS}")

    # --- full fine-tuning: data and compute -------------------------------------------------------------------
    full_ok, full_why = True, ""
    if small:
        full_ok, full_why = False, (f"{small_why}: too little data to move every weight (the smallest set full fine-tuning "
                                    f"was measured best on had 658 training rows; below {FULL_MIN_ROWS} the cheap methods are the bet)")
    elif budget.on_gpu:
        full_why = (f"{_n(rows)} training rows >= {FULL_MIN_ROWS} and trials get a GPU "
                    f"(~{_dur(full_epoch)} per full epoch)")
    elif search_s is not None:
        need = FULL_MIN_EPOCHS * full_epoch
        if need > search_s:
            full_ok, full_why = False, (f"{FULL_MIN_EPOCHS} full epochs take ~{_dur(need)} on {per_trial} "
                                        f"({_params(model.params)} parameters x {data.tokens_mean:.0f} tokens x "
                                        f"{_n(rows)} rows), more than the search's ~{_dur(search_s)}: compute does not allow it")
        else:
            full_why = (f"{_n(rows)} training rows >= {FULL_MIN_ROWS}, and {FULL_MIN_EPOCHS} full epochs "
                        f"(~{_dur(need)} on {per_trial}) fit the search's ~{_dur(search_s)}")
    else:
        full_why = (f"{_n(rows)} training rows >= {FULL_MIN_ROWS}; no time budget, so compute does not limit it "
                    f"(~{_dur(full_epoch)} per full epoch on {per_trial})")

    # --- qlora --------------------------------------------------------------------------------------------------
    qlora_ok, qlora_why = False, ""
    if not budget.cuda:
        qlora_why = f"no CUDA ({budget.cuda_how}): qlora runs only on a CUDA GPU"
    elif not budget.bitsandbytes:
        qlora_why = "CUDA but no bitsandbytes installed: qlora needs its 4-bit kernels"
    elif budget.gpu_per_trial <= 0:
        qlora_why = "CUDA is here but budget.resources_per_trial.gpu is 0: trials would get no GPU"
    elif small:
        qlora_why = f"{small_why}: the cheap methods come first"
    elif model.params < QLORA_MIN_PARAMS:
        qlora_why = (f"CUDA, but {_params(model.params)} parameters < {_params(QLORA_MIN_PARAMS)}: a 4-bit base saves "
                     f"~{model.params * 3.5 / 2**20:.0f} MiB and slows every product (dequantization); lora does the same job")
    else:
        qlora_ok = True
        qlora_why = (f"CUDA ({budget.cuda_how}) with bitsandbytes and {_params(model.params)} parameters >= "
                     f"{_params(QLORA_MIN_PARAMS)}: a 4-bit base saves ~{model.params * 3.5 / 2**20:.0f} MiB of weights per trial")

    # --- candidate methods, in priority order ------------------------------------------------------------------
    imbalanced = data.imbalance >= IMBALANCED
    if small:
        order = ["head", "zero_shot", "bitfit", "sparse", "ln_tuning", "lora", "ia3"]
    else:
        order = ["head", "lora", "full", "sparse", "bitfit", "zero_shot", "ia3", "ln_tuning", "loha", "lokr",
                 "vera", "adalora"]
        if qlora_ok:
            order.insert(2, "qlora")
    if imbalanced and "zero_shot" in order:
        order.remove("zero_shot")
        order.insert(1, "zero_shot")
    left_out: list[tuple[str, str]] = []
    if not full_ok:
        if "full" in order:
            order.remove("full")
        left_out.append(("full", full_why))
    if not qlora_ok:
        left_out.append(("qlora", qlora_why))
    n_methods = max(2, min(len(order), n_trials // 2))
    chosen, dropped = order[:n_methods], order[n_methods:]
    for m in dropped:
        left_out.append((m, f"the budget ({n_how}) holds about {n_methods} methods (trials / 2): each method gets a "
                            f"start-up trial and the sampler needs the rest; more trials -> more methods"))

    reasons = {
        "head": "the classifier alone on cached encoder features: seconds per trial, the baseline every search needs",
        "zero_shot": ("nearest class centroid, no training: " + (
            f"{small_why}" if small else f"classes are imbalanced ({data.imbalance:.1f}x >= {IMBALANCED:g}x) and a "
            "centroid per class ignores class frequencies" if imbalanced else "cheap, shows whether fine-tuning pays off")),
        "bitfit": "only the biases train (~0.1% of the weights): little to overfit" + (f" with {small_why}" if small else ""),
        "sparse": "a fraction 1 - sparsity of the weights trains: as close to full fine-tuning as the data allows, "
                  "at a few thousand to 100k trained entries" + (f" ({small_why})" if small else ""),
        "lora": "low-rank adapters: most of full fine-tuning's gain at ~0.35x its cost per example (throughput benchmark)",
        "qlora": qlora_why,
        "full": full_why,
        "ln_tuning": "only the LayerNorms train (11 k entries on MiniLM)",
        "ia3": "(IA)^3 scaling vectors: 17 k entries on MiniLM",
        "loha": "LoRA variant (Hadamard product); the budget has room for it",
        "lokr": "LoRA variant (Kronecker product); the budget has room for it",
        "vera": "LoRA variant with shared random matrices; the budget has room for it",
        "adalora": "LoRA with its rank re-allocated during training; the budget has room for it",
    }

    # --- shared ranges ------------------------------------------------------------------------------------------
    if model.params_all <= 30e6:
        full_lr, lr_src = 7e-5, f"{_params(model.params_all)} parameters (all layers) <= 30 M: MiniLM-sized (default.yaml's 2e-5..2e-4, best 1e-4 measured)"
    elif model.params_all <= 150e6:
        full_lr, lr_src = 3e-5, f"{_params(model.params_all)} parameters (all layers), BERT-base-sized: the usual 2e-5..5e-5"
    else:
        full_lr, lr_src = 1.5e-5, f"{_params(model.params_all)} parameters (all layers) > 150 M: large encoders want 1e-5..3e-5"
    width_why = f"{decades:g} decade{'' if decades == 1 else 's'} wide ({level_name}: ~{n_trials} trials)"

    t_eff = min(data.tokens_p95, data.max_length)
    if rows < SMALL_ROWS:
        batches, batch_why = [8, 16], f"{_n(rows)} rows < {SMALL_ROWS}: small batches keep enough steps per epoch"
        ep, ep_why = {"low": 2, "high": 8, "step": 1}, f"{_n(rows)} rows < {SMALL_ROWS}: an epoch is ~{max(1, rows // 16)} steps at batch 16, more passes needed"
        head_ep = {"low": 5, "high": 30, "step": 1}
    elif rows < 5000:
        batches, batch_why = [8, 16, 32], f"{_n(rows)} rows < 5,000: as the measured default"
        ep, ep_why = {"low": 1, "high": 3, "step": 0.5}, f"{_n(rows)} rows < 5,000: 1-3 epochs, as the measured default"
        head_ep = {"low": 2, "high": 10, "step": 1}
    elif rows < 50_000:
        batches, batch_why = [16, 32, 64], f"{_n(rows)} rows >= 5,000: larger batches, still >= {rows // 64} steps per epoch"
        ep, ep_why = {"low": 0.5, "high": 2, "step": 0.5}, f"{_n(rows)} rows >= 5,000: an epoch is already {rows // 16:,} steps at batch 16"
        head_ep = {"low": 1, "high": 5, "step": 1}
    else:
        batches, batch_why = [32, 64, 128], f"{_n(rows)} rows >= 50,000: large batches"
        ep, ep_why = {"low": 0.25, "high": 1, "step": 0.25}, f"{_n(rows)} rows >= 50,000: a fraction of an epoch often suffices"
        head_ep = {"low": 1, "high": 3, "step": 1}
    if t_eff >= LONG_TOKENS:
        batches = [max(2, b // 2) for b in batches] if t_eff < 256 else [max(1, b // 4) for b in batches]
        batch_why += (f"; halved{' twice' if t_eff >= 256 else ''}: p95 {t_eff} tokens per row >= {LONG_TOKENS} "
                      f"(memory and step time grow with length)")
    head_why = f"cached features make epochs cheap; {_n(rows)} rows"
    if classes >= MANY_CLASSES:
        head_ep = {**head_ep, "high": head_ep["high"] * 2}
        head_why += f"; {classes} classes >= {MANY_CLASSES}: a larger head needs more passes"

    def epochs_for(method: str) -> tuple[Any, str]:
        rng, why = dict(ep), ep_why
        if search_s is not None:
            per = epoch_seconds(method, data, model, budget)
            cap = 0.5 * search_s / per if per > 0 else float("inf")
            if cap < rng["high"]:
                step = rng["step"]
                high = max(0.25, math.floor(cap / 0.25) * 0.25)
                low = min(rng["low"], high)
                step = step if (high - low) >= step and _is_multiple(high - low, step) else 0.25
                why += (f"; capped at {high:g}: an epoch takes ~{_dur(per)} on {per_trial}, a trial should "
                        f"use at most half the search's ~{_dur(search_s)}")
                rng = {"low": low, "high": high, "step": step}
        if rng["low"] == rng["high"]:
            return rng["low"], why
        return rng, why

    def lr(method: str) -> tuple[dict, str]:
        if method == "full":
            return _lr_range(full_lr, decades), f"centre {full_lr:.1e}: {lr_src}; {width_why}"
        c = full_lr * LR_FACTOR[method]
        if method in ("lora", "qlora", "adalora"):
            why = (f"centre {c:.1e} = 10x full fine-tuning's {full_lr:.1e}: LoRA's best learning rate is about ten "
                   f"times full's (default.yaml's measured points: lora 1e-3, full 1e-4); {width_why}")
        else:
            why = f"centre {c:.1e} = {LR_FACTOR[method]:g}x full's {full_lr:.1e} (as wide.yaml's ranges); {width_why}"
        return _lr_range(c, decades), why

    def targets(plan: MethodPlan, lora_like: bool = True) -> None:
        if model.bert_like:
            ch = [["query", "value"], ["query", "key", "value", "dense"]]
            if level >= 1:
                ch.append(["query", "key", "value", "attention.output.dense"])
            plan.add("target_modules", {"choices": ch}, f"{model.model_type} module names; "
                     + ("attention q/v or every linear layer, as default.yaml" if level == 0 else f"{level_name}: also all of attention"))
        else:
            ch = ["attention_qv", "attention_all"] + (["all_linear"] if level >= 1 else [])
            plan.add("target_preset", {"choices": ch}, f"model_type {model.model_type}: presets, not BERT module names")

    plans: list[MethodPlan] = []
    rank_high = (16, 32, 32)[level] * (2 if classes >= MANY_CLASSES else 1)
    rank_why = f"{level_name} budget" + (f"; x2 for {classes} classes >= {MANY_CLASSES}" if classes >= MANY_CLASSES else "")
    for m in chosen:
        plan = MethodPlan(m, reasons[m])
        if m == "zero_shot":
            plan.add("metric", {"choices": ["cosine", "euclidean"]}, "both are one pass over the training rows")
        elif m == "head":
            plan.add("learning_rate", _lr_range(1e-2, 2.0), "a fresh linear head: 1e-3..1e-1 as default.yaml (measured best 3e-3)")
            plan.add("epochs", head_ep, head_why)
            plan.add("batch_size", {"choices": batches}, batch_why)
        else:
            r, why = lr(m)
            plan.add("learning_rate", r, why)
            if m == "full":
                ks = sorted({k for k in (1, model.layers // 4, model.layers // 2) if 1 <= k < model.layers})
                ks = ks if level >= 1 else ks[:1]
                if ks:
                    plan.add("unfreeze_last_k", {"choices": [None, *ks]},
                             f"all or the top {'/'.join(map(str, ks))} of {model.layers} layers (top layers train from "
                             f"cached activations: 2.6x faster for 1 of 6)")
            elif m in ("lora", "qlora"):
                plan.add("rank", {"low": 2, "high": rank_high, "log": True}, rank_why)
                plan.add("alpha", {"low": 8.0, "high": 32.0}, "as default.yaml")
                plan.add("dropout", 0.05, "fixed, as default.yaml")
                targets(plan)
                if m == "qlora":
                    plan.add("quant_type", "nf4", "NF4, as the QLoRA paper")
                    plan.add("compute_dtype", "bfloat16", "bf16 products on the GPU, as the QLoRA paper")
            elif m == "sparse":
                plan.add("sparsity", {"low": 0.99, "high": 0.9999 if level == 0 else 0.99999},
                         "1% down to 0.01% of the weights" if level == 0 else f"{level_name}: down to 0.001%")
                sel = ["gradient", "magnitude", "random"] + (["fisher"] if level >= 1 else [])
                plan.add("selection", {"choices": sel}, "as default.yaml" + ("" if level == 0 else " + fisher"))
                if level >= 1:
                    plan.add("budget", {"choices": ["global", "per_tensor"]}, level_name)
            elif m == "bitfit":
                plan.add("biases", {"choices": ["all", "query_ffn"]}, "every bias, or the query and feed-forward ones only (half as many)")
            elif m == "ia3":
                plan.add("feedforward", {"choices": [True, False]}, "with or without scaling the feed-forward inputs")
            elif m in ("loha", "lokr"):
                plan.add("rank", {"low": 2, "high": 8 if m == "loha" else 16, "log": True}, "as wide.yaml")
                plan.add("alpha", {"low": 4.0, "high": 16.0}, "as wide.yaml")
                if m == "lokr" and model.hidden % 8 == 0:
                    plan.add("decompose_factor", {"choices": [-1, 8]}, f"hidden {model.hidden} = 8 x {model.hidden // 8}")
                targets(plan)
            elif m == "vera":
                plan.add("rank", {"choices": [64, 128, 256]}, "VeRA trains 2 vectors per module: ranks far above LoRA's")
                targets(plan)
            elif m == "adalora":
                plan.add("init_r", {"choices": [8, 12]}, "as wide.yaml")
                plan.add("target_r", {"low": 2, "high": 8}, "the average rank left after pruning, as wide.yaml")
                targets(plan)
            e, ewhy = epochs_for(m)
            if m == "adalora":  # its rank schedule spans the trial: fixed epochs keep trials comparable
                e = round((e["low"] + e["high"]) / 2 / e["step"]) * e["step"] if isinstance(e, dict) else e
                e = int(e) if float(e).is_integer() else e
                ewhy = "fixed: AdaLoRA plans its rank schedule over the trial's steps; " + ewhy
            plan.add("epochs", e, ewhy)
            plan.add("batch_size", {"choices": batches}, batch_why)
        plans.append(plan)

    # --- portfolio: default.yaml's measured points, only for the model they were measured on ---------------------
    portfolio, note = [], ""
    if model.name != PACKAGED_MODEL:
        note = (f"no portfolio: default.yaml's points were measured on {PACKAGED_MODEL}, this job tunes "
                f"{model.name}; one start-up trial per method instead")
    else:
        portfolio, note = _portfolio_from_default(plans)

    header = _header(config, data, model, budget, n_trials, n_how, level_name, full_epoch, hw)
    if imbalanced:
        header.append(f"#   note: classes are imbalanced ({data.imbalance:.1f}x >= {IMBALANCED:g}x); consider "
                      f"objective.metric: val_macro_f1 in the job (a space cannot set it)")
    if data.truncated_share > 0.05:
        header.append(f"#   note: {data.truncated_share:.0%} of the training rows are longer than model.max_length "
                      f"{data.max_length} (p95 {data.tokens_p95} tokens); raising it costs ~linearly more per example")
    if budget.cuda and budget.gpu_per_trial <= 0:
        header.append("#   note: CUDA is available but budget.resources_per_trial.gpu is 0: trials train on the CPU; "
                      "give them gpu: 1 (or a fraction) and run this again")
    if config.scheduler.kind == "asha":
        from autotune.config.space import SearchSpace, compile_space
        from autotune.training.loop import rung_count

        compiled, _ = compile_space(SearchSpace(methods=_methods_dict([p for p in plans if p.name != "qlora"]) or
                                                {"head": {}}), "<suggested>")
        rungs = rung_count(compiled.max_value("epochs", config.training.epochs), config.training) if compiled else 0
        if compiled and config.scheduler.grace_period > rungs:
            header.append(f"#   note: the job's scheduler.grace_period {config.scheduler.grace_period} is more than the "
                          f"{rungs} rungs of this space's longest trial: `autotune validate` will refuse it; lower it")
    desc = (f"suggested for {rows:,} training rows, {classes} classes, {model.name} ({model.layers} layers), "
            f"{n_trials} trials ({level_name}): {', '.join(p.name for p in plans)}")
    return Advice(header, plans, left_out, portfolio, note, desc)


def _is_multiple(x: float, step: float) -> bool:
    return abs(round(x / step) * step - x) < 1e-9


def _header(config, data, model, budget, n_trials, n_how, level_name, full_epoch, hw) -> list[str]:
    counts = ", ".join(f"{k} {v:,}" for k, v in list(data.class_counts.items())[:8])
    if data.n_classes > 8:
        counts += f", ... ({data.n_classes - 8} more)"
    time_parts = [f"wall_clock_s {budget.wall_clock_s:g}" if budget.wall_clock_s else "",
                  f"time_budget_s {budget.time_budget_s:g}" if budget.time_budget_s else ""]
    time_text = ", ".join(p for p in time_parts if p) or "no time budget"
    search = f"~{_dur(budget.search_s)} of search" if budget.search_s is not None else "search time unbounded"
    layers = (f"{model.layers} of {model.layers_total} encoder layers (model.num_hidden_layers)"
              if model.layers < model.layers_total else f"{model.layers} encoder layers")
    gpu = (f"CUDA ({budget.cuda_how}{', with bitsandbytes' if budget.bitsandbytes else ', no bitsandbytes'})"
           if budget.cuda else f"no CUDA ({budget.cuda_how})")
    return [
        f"# Suggested by `autotune suggest-space` for job '{config.name}': a starting point, every choice explained beside it.",
        "# Use it from the job (search: {space: THIS_FILE}) and check it with `autotune validate JOB.yaml`.",
        "# Inputs:",
        f"#   data:   {data.train_rows:,} training rows ({data.rows_kept:,} after cleaning, {data.split}), "
        f"{data.n_classes} classes ({counts}; majority/minority {data.imbalance:.2f}x)",
        f"#           tokens per row with the job's tokenizer: median {data.tokens_median}, p95 {data.tokens_p95}; "
        f"max_length {data.max_length} cuts {data.truncated_share:.1%}",
        f"#   model:  {model.name} ({model.model_type}): {layers}, hidden {model.hidden}, "
        f"{_params(model.params)} parameters ({model.counted_from})",
        f"#   budget: {n_how}; {time_text} ({search}); {hw}",
        f"#   machine: {budget.cpus} CPU(s), {gpu}",
        f"#   estimate: one full fine-tuning epoch ~{_dur(full_epoch)} per trial "
        f"({'GPU rate guessed' if budget.on_gpu else 'CPU rate from docs/benchmarks.md'}); ranges: {level_name}",
    ]


def _portfolio_from_default(plans: list[MethodPlan]) -> tuple[list[dict], str]:
    """default.yaml's measured points for the methods kept, with the knobs inside this space's ranges (a point
    whose learning rate falls outside is not reused: the learning rate is what was measured)."""
    from autotune.config.loader import REPO_ROOT, load_space_file
    from autotune.config.space import SearchSpace, compile_space

    path = REPO_ROOT / "search_spaces" / "default.yaml"
    try:
        shipped = load_space_file(path)
    except ConfigError:
        return [], f"no portfolio: {path} not found"
    methods = _methods_dict([p for p in plans if p.name != "qlora"])  # qlora's check needs a GPU; no point names it
    space, _ = compile_space(SearchSpace(methods=methods), "<suggested>") if methods else (None, [])
    if space is None:
        return [], "no portfolio"
    out, skipped = [], []
    for point in shipped.portfolio:
        if point.method not in space.methods:
            continue
        kept = space.contains(point.method, point.knobs)
        if "learning_rate" not in kept:
            skipped.append(point.method)
            continue
        dropped = [k for k in point.knobs if k not in kept]
        why = (point.why or "") + (f"; {', '.join(dropped)} left to the sampler (outside this space)" if dropped else "")
        out.append({"method": point.method, "knobs": kept, "why": why})
    if not out:
        return [], "no portfolio: none of default.yaml's measured points lies in this space"
    note = (f"default.yaml's measured points (MiniLM, 658-1,000 training rows, max length 64) for the methods kept "
            f"({', '.join(p['method'] for p in out)})")
    if skipped:
        note += f"; {', '.join(skipped)} left out: its measured learning rate lies outside this space"
    return out, note


def _methods_dict(plans: list[MethodPlan]) -> dict:
    return {p.name: {k.name: k.value for k in p.knobs} for p in plans}


# ---- rendering ----------------------------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_RESERVED = {"null", "true", "false", "yes", "no", "on", "off", "y", "n", "~"}


def _y(value: Any) -> str:
    """A YAML flow rendering that reads back as the same value (floats always with a dot)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0.0"
        if 1e-2 <= abs(value) < 1e6:
            text = repr(value)
            return text if "." in text or "e" in text else text + ".0"
        mant, exp = f"{value:.1e}".split("e")
        return f"{mant}e{int(exp):+d}"
    if isinstance(value, str):
        return value if _PLAIN.match(value) and value.lower() not in _RESERVED else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_y(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_y(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {type(value).__name__}")


def _comment_lines(text: str, indent: str, width: int = 116) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(indent) + 2 + len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    if line:
        lines.append(line)
    return [f"{indent}# {ln}" for ln in lines]


def render(advice: Advice) -> str:
    out = list(advice.header)
    if advice.left_out:
        out.append("# Left out:")
        grouped: dict[str, list[str]] = {}
        for m, why in advice.left_out:
            grouped.setdefault(why, []).append(m)
        for why, names in grouped.items():
            lines = _comment_lines(f"{', '.join(names)}: {why}", "")
            out += [lines[0][:1] + "   " + lines[0][1:]] + ["#     " + ln[2:] for ln in lines[1:]]
    out.append(f"description: {_y(advice.description)}")
    out.append("methods:")
    for plan in advice.methods:
        out += _comment_lines(f"{plan.name}: {plan.why}", "  ")
        out.append(f"  {plan.name}:")
        for k in plan.knobs:
            line = f"    {k.name}: {_y(k.value)}"
            out.append(f"{line}  # {k.why}" if k.why else line)
    out += _comment_lines(advice.portfolio_note, "")
    if advice.portfolio:
        out.append("portfolio:")
        for p in advice.portfolio:
            out.append(f"  - method: {p['method']}")
            out.append(f"    knobs: {_y(p['knobs'])}")
            out.append(f"    why: {json.dumps(p['why'])}")
    return "\n".join(out) + "\n"


def check(text: str, source: str = "<suggested space>", planned_cuda: bool = False) -> None:
    """The text must load as `search.space: FILE` loads a file. qlora's machine requirement is excused when the
    space was planned for a CUDA machine (--cuda) and this one has none."""
    import yaml

    from autotune.config.space import SearchSpace, compile_space

    space = SearchSpace.model_validate(yaml.safe_load(text))
    _, problems = compile_space(space, source)
    if planned_cuda:
        problems = [p for p in problems if "methods.qlora: needs a CUDA GPU" not in p]
    if problems:
        raise AssertionError("the suggested space does not validate (a bug in autotune/advisor.py):\n" + "\n".join(problems))


def suggest_space(job_path: str | Path, cuda: bool | None = None) -> str:
    """The suggested space for a job, as YAML text with its reasons as comments."""
    config, data_path = load_job_settings(job_path)
    src = str(job_path)
    model = model_facts(config.model, src)
    try:
        data = data_facts(config, data_path, src)
    except OSError as exc:  # a data file this user may not read, a folder that went away
        name = exc.filename or data_path or "the data file"
        raise DataError(f"{name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    budget = budget_facts(config, cuda)
    advice = advise(config, data, model, budget)
    text = render(advice)
    check(text, planned_cuda=cuda is True)
    return text
