"""Weight-only int8 export for small deployments.

Every large 2-D weight (linear layers and embeddings) is stored as int8 with one float32 scale per output
row (symmetric, scale = max|w| / 127); everything else stays float32. Loading dequantizes to float32, so
inference code is unchanged (the artifact's modeling_autotune.py does it: `from_int8`, no autotune needed); the saving is on disk and in download size. We avoid torch's
`quantize_dynamic` (deprecated quantized-tensor APIs) and keep the file safetensors, never pickles.
"""

from __future__ import annotations

from pathlib import Path

INT8_FILE = "model.int8.safetensors"
MIN_ENTRIES = 4096  # small tensors (biases, LayerNorm, the head) are not worth quantizing


def quantize_state(state: dict) -> dict:
    import torch

    out = {}
    for name, t in state.items():
        if t.is_floating_point() and t.ndim == 2 and t.numel() >= MIN_ENTRIES:
            scale = (t.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            out[f"{name}.int8"] = torch.round(t / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            out[f"{name}.scale"] = scale.float().contiguous()
        else:
            out[name] = t.contiguous()
    return out


def dequantize_state(tensors: dict) -> dict:
    from autotune.training.modeling_autotune import dequantize_state as shipped  # the artifact's own copy

    return shipped(tensors)


def save_int8(model, out: Path) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = out / INT8_FILE
    save_file(quantize_state(state), str(path), metadata={"format": "autotune-int8-weight-only/1"})
    return path


def load_int8(artifact_dir: Path):
    """The artifact's model with its weights taken from the int8 file (dequantized to float32)."""
    from safetensors.torch import load_file

    from autotune.artifact import load_artifact_model

    model = load_artifact_model(artifact_dir)
    model.load_state_dict(dequantize_state(load_file(str(Path(artifact_dir) / INT8_FILE))))
    model.eval()
    return model
