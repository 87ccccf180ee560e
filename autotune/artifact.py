"""The deploy artifact: a directory a plain transformers user loads with

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

holding safetensors weights (adapters merged, never pickles), the tokenizer, config.json with the label
names, the model code (modeling_autotune.py, ~70 lines of torch), a model card (README.md) and
MANIFEST.json with the sha256 and size of every other file. `verify()` checks all of it.

An artifact handed to `verify` is untrusted: it reads only regular files inside the folder (every path is
opened component by component without following a symlink), refuses absolute paths, `..`, symlinks
(listed or not), special files and unlisted files, types the manifest strictly, and turns every failure to
load the model into an ArtifactError with the reason."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autotune.errors import AutotuneError

MANIFEST = "MANIFEST.json"
MODELING = "modeling_autotune.py"
REQUIRED = ("config.json", "model.safetensors")
FORMAT = "autotune-artifact/1"
MAX_MANIFEST_BYTES = 4 << 20  # a manifest lists a dozen files: a few KiB
MAX_ENTRIES = 10_000  # files and folders walked in an artifact folder
MAX_PROBLEMS = 50
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class ArtifactError(AutotuneError):
    exit_code = 5


class ManifestEntry(BaseModel):
    """One file of the artifact. Strict: `"bytes": "1026"`, `true` or `1026.0` are not sizes."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the file, 64 lowercase hex digits.")
    size: int = Field(..., alias="bytes", ge=0, description="Size of the file in bytes.")


class Manifest(BaseModel):
    """MANIFEST.json: every file of the artifact but the manifest itself, by path relative to the folder."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal["autotune-artifact/1"] = Field(..., description="Manifest format and version.")
    files: dict[str, ManifestEntry] = Field(..., min_length=1, description="relative path -> sha256 and size")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_artifact(model, tokenizer, out: Path, card: str, extra_files: list[Path] = ()) -> dict:
    """Write the artifact directory (plus `extra_files`, copied in); returns the manifest. Every file is
    written mode 0644 (safetensors writes its weights 0600), the folders 0755."""
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
    files = sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink() and p.name != MANIFEST)
    for p in [out, *out.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    manifest = {
        "format": FORMAT,
        "files": {p.relative_to(out).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (out / MANIFEST).chmod(0o644)
    return manifest


def verify(path: Path, load: bool = True) -> dict:
    """Check every file against the manifest (a flipped byte fails) and, if asked, load the model.
    Returns the manifest (as a dict). Raises ArtifactError naming every problem found."""
    path = Path(path)
    try:
        root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: not found") from None
    except NotADirectoryError:
        raise ArtifactError(f"{path}: not a directory (an artifact is a folder holding {MANIFEST})") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be opened ({exc.strerror})") from None
    try:
        manifest, raw = _read_manifest(path, root)
        problems = _check_files(path, root, manifest)
    except OSError as exc:  # a folder we may not list, a file gone mid-check
        raise ArtifactError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(root)
    if problems:
        shown = problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more"] if len(problems) > MAX_PROBLEMS else [])
        raise ArtifactError(f"{path}: artifact verification failed:\n  " + "\n  ".join(shown))
    if load:
        _load_checked(path)
    return raw


def _name(rel: str) -> str:
    """A manifest path as it may be echoed: printable, at most 200 characters."""
    if rel.isprintable() and len(rel) <= 200:
        return rel
    return repr(rel[:200]) + ("..." if len(rel) > 200 else "")


def _read_manifest(path: Path, root: int) -> tuple[Manifest, dict]:
    mf = path / MANIFEST
    try:
        fd = os.open(MANIFEST, _OPEN, dir_fd=root)
    except FileNotFoundError:
        if (path / "artifact" / MANIFEST).exists() or (path / "state").is_dir() or (path / "job.yaml").is_file():
            raise ArtifactError(f"{path}: no {MANIFEST}: this looks like a job's output folder; verify its artifact "
                                f"with `autotune verify {path / 'artifact'}`") from None
        raise ArtifactError(f"{path}: no {MANIFEST}: not an AutoTune artifact") from None
    except OSError as exc:
        raise ArtifactError(f"{mf}: {_open_problem(exc)}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{mf}: not a regular file")
        blob = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(blob) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{mf}: too large for a manifest (over {MAX_MANIFEST_BYTES >> 20} MiB)")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"duplicate key {_name(dup)!s}")
        return dict(pairs)

    def no_constant(name):
        raise ValueError(f"{name} is not a number")

    try:
        raw = json.loads(blob.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{mf}: not a valid manifest (not JSON: {str(exc)[:200]})") from None
    try:
        return Manifest.model_validate(raw), raw
    except ValidationError as exc:
        from autotune.config.errors import describe

        lines = []
        for err in exc.errors(include_url=False)[:MAX_PROBLEMS]:
            loc = [str(p) for p in err["loc"]]
            where = loc[0] + (f"[{loc[1][:200]!r}]" if loc[0] == "files" and len(loc) > 1 else "")
            where += "".join(f".{p}" for p in loc[2 if loc[0] == "files" else 1:])
            if err["type"] == "string_pattern_mismatch" and loc[-1] == "sha256":
                lines.append(f"{where}: must be 64 lowercase hexadecimal digits (got {str(err['input'])[:80]!r})")
            else:
                lines.append(f"{where}: {describe(err)}")
        raise ArtifactError(f"{mf}: not a valid manifest:\n  " + "\n  ".join(lines)) from None


def _bad_rel(rel: str) -> bool:
    parts = rel.split("/")
    return (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or any(p in ("", ".", "..") for p in parts)
            or rel == MANIFEST)


def _walk(root: int) -> tuple[dict[str, str], bool]:
    """Every entry under the artifact folder, never following a symlink: rel path -> file / dir / symlink /
    special. The bool says whether the walk stopped at MAX_ENTRIES."""
    found: dict[str, str] = {}
    stack = [("", os.dup(root))]
    try:
        while stack:
            prefix, fd = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    for e in entries:
                        if len(found) >= MAX_ENTRIES:
                            return found, True
                        rel = prefix + e.name
                        if e.is_symlink():
                            found[rel] = "symlink"
                        elif e.is_dir(follow_symlinks=False):
                            try:
                                sub = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
                            except OSError:
                                found[rel] = "special"
                                continue
                            found[rel] = "dir"
                            stack.append((rel + "/", sub))
                        elif e.is_file(follow_symlinks=False):
                            found[rel] = "file"
                        else:
                            found[rel] = "special"
            finally:
                os.close(fd)
    finally:
        for _, fd in stack:
            os.close(fd)
    return found, False


def _open_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link (not allowed in an artifact)"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "missing"
    return f"cannot be read ({exc.strerror})"


def _open_inside(root: int, rel: str) -> int:
    """Open rel below root one component at a time, refusing a symlink at every step."""
    parts = rel.split("/")
    fds = []
    try:
        fd = root
        for part in parts[:-1]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
            fds.append(fd)
        return os.open(parts[-1], _OPEN, dir_fd=fd)
    finally:
        for fd in fds:
            os.close(fd)


def _check_files(path: Path, root: int, manifest: Manifest) -> list[str]:
    problems: dict[str, str] = {}  # rel -> problem (one per path)
    tree, truncated = _walk(root)
    if truncated:
        return [f"more than {MAX_ENTRIES} files and folders: not an AutoTune artifact"]
    for rel, kind in tree.items():
        if kind == "symlink":
            problems[rel] = "is a symbolic link (not allowed in an artifact)"
        elif kind == "special":
            problems[rel] = "not a regular file (not allowed in an artifact)"
        elif kind == "file" and rel != MANIFEST and rel not in manifest.files:
            problems[rel] = "not in the manifest"
    for rel, entry in manifest.files.items():
        if _bad_rel(rel):
            problems[rel] = "must be a path inside the artifact (relative, no '..', '.', empty part or backslash)"
            continue
        if rel in problems:
            continue
        if tree.get(rel) == "dir":
            problems[rel] = "is a directory, not a file"
            continue
        parts = rel.split("/")
        linked = next(("/".join(parts[:i]) for i in range(1, len(parts)) if tree.get("/".join(parts[:i])) == "symlink"), None)
        if linked is not None:
            problems[rel] = f"its folder {_name(linked)} is a symbolic link (not allowed in an artifact)"
            continue
        try:
            fd = _open_inside(root, rel)
        except OSError as exc:
            problems[rel] = _open_problem(exc)
            continue
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                problems[rel] = "not a regular file (not allowed in an artifact)"
            elif st.st_size != entry.size:
                problems[rel] = f"size {st.st_size} bytes, the manifest says {entry.size}"
            else:
                h = hashlib.sha256()
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
                if h.hexdigest() != entry.sha256:
                    problems[rel] = "sha256 does not match the manifest (file changed or corrupted)"
    for rel in manifest.files:
        if rel.lower().endswith(PICKLE_SUFFIXES) and rel not in problems:
            problems[rel] = "pickle-based weights are not allowed"
    for rel in tree:
        if tree[rel] == "file" and rel.lower().endswith(PICKLE_SUFFIXES) and rel not in problems:
            problems[rel] = "pickle-based weights are not allowed"
    for rel in REQUIRED:
        if rel not in manifest.files:
            problems.setdefault(rel, "required, but not in the manifest")
    return [f"{_name(rel)}: {msg}" for rel, msg in sorted(problems.items())]


def _load_checked(path: Path) -> None:
    """Load the model, every failure an ArtifactError with its reason. Before anything is allocated the
    weights file's tensors are compared with the model config.json describes (built on the meta device):
    a config that claims a huge model, or weights that do not fit it, fail here, not in an allocation."""
    try:
        _compare_weights_with_config(path)
        load_artifact_model(path)
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever breaks inside transformers/safetensors: the artifact does not load
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ArtifactError(f"{path}: the model does not load: {type(exc).__name__}: {first}") from None


def _compare_weights_with_config(path: Path) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    from autotune.training.model import quiet_transformers
    from autotune.training.modeling_autotune import AutotuneForSequenceClassification

    quiet_transformers()
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    config = AutoConfig.from_pretrained(path)
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > len(shapes):
        raise ArtifactError(f"{path}: config.json: num_hidden_layers is {layers}, but model.safetensors holds only "
                            f"{len(shapes)} tensors")
    largest = max((d for s in shapes.values() for d in s), default=0)
    for key in ("hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings", "num_labels"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > largest:
            raise ArtifactError(f"{path}: config.json: {key} is {value}, larger than any tensor in model.safetensors")

    class _Skeleton(AutotuneForSequenceClassification):
        config_class = type(config)

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in _Skeleton(config).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    found = []
    if missing:
        found.append(f"missing tensors config.json needs: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if wrong:
        found.append("tensors of the wrong shape: " + ", ".join(f"{k} {shapes[k]} (config.json: {expected[k]})" for k in wrong[:5]))
    if extra:
        found.append(f"tensors the model does not have: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    if found:
        raise ArtifactError(f"{path}: model.safetensors does not match config.json: " + "; ".join(found))


def load_artifact_model(path):
    """Load the model class from *our* package (no remote code executed) with the artifact's weights."""
    from transformers import AutoConfig

    from autotune.training.model import quiet_transformers
    from autotune.training.modeling_autotune import AutotuneForSequenceClassification

    quiet_transformers()
    config = AutoConfig.from_pretrained(path)

    class _Loaded(AutotuneForSequenceClassification):
        config_class = type(config)

    model = _Loaded.from_pretrained(path, config=config, use_safetensors=True)
    model.eval()
    return model
