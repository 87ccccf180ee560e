"""The deploy artifact: a directory a plain transformers user loads with

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

holding safetensors weights (adapters merged, never pickles), the tokenizer, config.json with the label
names, the model code (modeling_autotune.py, ~70 lines of torch), a model card (README.md) and
MANIFEST.json with the sha256 and size of every other file. `verify()` checks all of it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from autotune.errors import AutotuneError

MANIFEST = "MANIFEST.json"
MODELING = "modeling_autotune.py"


class ArtifactError(AutotuneError):
    exit_code = 5


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_artifact(model, tokenizer, out: Path, card: str, extra_files: list[Path] = ()) -> dict:
    """Write the artifact directory (plus `extra_files`, copied in); returns the manifest."""
    import shutil

    import autotune.training.modeling_autotune as modeling

    out.mkdir(parents=True, exist_ok=True)
    model.config.auto_map = {"AutoModelForSequenceClassification": f"{MODELING[:-3]}.AutotuneForSequenceClassification"}
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    cfg_cls = type(model.config).__name__
    source = Path(modeling.__file__).read_text()
    # the remote-code class must declare the config class transformers will hand it (e.g. BertConfig)
    source += f"\n\nfrom transformers import {cfg_cls} as _ConfigClass  # noqa: E402\n\nAutotuneForSequenceClassification.config_class = _ConfigClass\n"
    (out / MODELING).write_text(source)
    (out / "README.md").write_text(card)
    for extra in extra_files:
        shutil.copy2(extra, out / Path(extra).name)
    for stray in out.glob("*.bin"):
        stray.unlink()  # belt and braces: nothing pickled ships
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "format": "autotune-artifact/1",
        "files": {str(p.relative_to(out)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify(path: Path, load: bool = True) -> dict:
    """Check every file against the manifest (a flipped byte fails) and, if asked, load the model."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST}: not an AutoTune artifact")
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
        assert isinstance(files, dict) and all({"sha256", "bytes"} <= set(m) for m in files.values())
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ArtifactError(f"{mf}: not a valid manifest ({type(exc).__name__}: {exc})") from None
    problems = []
    for rel, meta in files.items():
        p = path / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta["bytes"]:
            problems.append(f"{rel}: size {p.stat().st_size} != {meta['bytes']} in the manifest")
        elif sha256_file(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 does not match the manifest (file changed or corrupted)")
    listed = set(manifest["files"]) | {MANIFEST}
    extra = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and str(p.relative_to(path)) not in listed)
    problems += [f"{rel}: not in the manifest" for rel in extra]
    pickles = [rel for rel in manifest["files"] if rel.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    problems += [f"{rel}: pickle-based weights are not allowed" for rel in pickles]
    if problems:
        raise ArtifactError(f"{path}: artifact verification failed:\n  " + "\n  ".join(problems))
    if load:
        load_artifact_model(path)
    return manifest


def load_artifact_model(path):
    """Load the model class from *our* package (no remote code executed) with the artifact's weights."""
    from transformers import AutoConfig

    from autotune.training.model import quiet_transformers
    from autotune.training.modeling_autotune import AutotuneForSequenceClassification

    quiet_transformers()
    config = AutoConfig.from_pretrained(path)

    class _Loaded(AutotuneForSequenceClassification):
        config_class = type(config)

    model = _Loaded.from_pretrained(path, config=config)
    model.eval()
    return model
