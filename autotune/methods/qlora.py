"""`qlora`: LoRA on a 4-bit quantized base (Dettmers et al. 2023, QLoRA): the encoder's linear weights are
stored in 4 bits (bitsandbytes NF4 or FP4, optionally double-quantized), the adapters and the head train in
full precision. GPU only: bitsandbytes' 4-bit kernels need CUDA.

A job that lists `qlora` is refused at `autotune validate` on a machine without a CUDA device and
bitsandbytes (`unmet_requirements`), never in the middle of a search; a trial that finds no GPU (e.g. no
GPU in its resources) fails with the same text.

Export dequantizes every 4-bit weight and adds the adapter's update in full precision: the artifact is the
plain float32 AutotuneForSequenceClassification (its weights are the 4-bit base + the update, so its
outputs match the trained model up to the compute dtype's rounding). The knobs are LoRA's, with the
initialisations that do not rewrite the base weights, and without DoRA (its norm would be taken over the
dequantized weight: not exported exactly).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from autotune.errors import TrialFailed
from autotune.methods.base import Method, Prepared, layers_of
from autotune.methods.lora import LoraParams, resolve_targets, unfreeze_peft_head


class QLoraParams(LoraParams):
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="Peak AdamW learning rate.")
    init: Literal["default", "gaussian"] = Field(
        "default", description="Adapter initialisation: default (Kaiming A, zero B) or gaussian (A ~ N(0, 1/r), zero B).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the base weights (NF4 as the paper).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit per weight).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype the 4-bit weights are dequantized to for each matrix product.")

    @model_validator(mode="after")
    def _no_dora(self):
        if self.use_dora:
            raise ValueError("qlora does not offer use_dora (use lora for DoRA)")
        return self


def missing_for_qlora() -> list[str]:
    """What this process lacks for 4-bit training: 'no CUDA device (torch X)', 'bitsandbytes not installed'."""
    import importlib.util

    found = []
    try:
        import torch

        if not torch.cuda.is_available():
            found.append(f"no CUDA device (torch {torch.__version__})")
    except ImportError:  # pragma: no cover - torch is a dependency
        found.append("torch not installed")
    if importlib.util.find_spec("bitsandbytes") is None:
        found.append("bitsandbytes not installed")
    return found


class QLoraPrepared(Prepared):
    def export(self):
        """Dequantize every 4-bit linear, fold the adapter update in, and give back the plain model (float32)."""
        import torch
        from peft.tuners.lora import LoraLayer
        from peft.utils.integrations import dequantize_bnb_weight
        from torch import nn

        base = self.model.base_model.model
        done: list[str] = []
        for name, module in list(base.named_modules()):
            if any(name.startswith(d + ".") for d in done):
                continue  # the base layer of a LoRA layer already replaced
            layer = module.get_base_layer() if isinstance(module, LoraLayer) else module
            weight = getattr(layer, "weight", None)
            if getattr(weight, "quant_state", None) is None:
                continue  # not a 4-bit linear
            with torch.no_grad():
                w = dequantize_bnb_weight(weight, state=weight.quant_state).float()
                if isinstance(module, LoraLayer):
                    for adapter in module.active_adapters:
                        w += module.get_delta_weight(adapter).float()
                plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=w.device)
                plain.weight.copy_(w)
                if layer.bias is not None:
                    plain.bias.copy_(layer.bias.float())
            plain.requires_grad_(False)
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, child, plain)
            done.append(name)
        return base.float()


class QLoraMethod(Method):
    name = "qlora"
    cost_rank = 30  # as LoRA, plus dequantization in every matrix product
    summary = "LoRA on a 4-bit (bitsandbytes) base; GPU only; dequantized and merged at export"
    Params = QLoraParams

    def unmet_requirements(self) -> list[str]:
        found = missing_for_qlora()
        if not found:
            return []
        return ["needs a CUDA GPU and bitsandbytes (4-bit kernels) on this machine; remove qlora from the space or "
                f"validate on a GPU machine (got {', '.join(found)})"]

    def apply(self, model, params: QLoraParams, ctx):
        found = missing_for_qlora()
        if found:
            raise TrialFailed(f"qlora: needs a CUDA GPU and bitsandbytes in the trial (got {', '.join(found)})")
        import torch
        from peft import LoraConfig, get_peft_model

        layers = layers_of("qlora", params, model)
        targets = resolve_targets("qlora", model, params.target_modules, params.target_preset)
        quantize_linears(model.encoder, params.quant_type, params.double_quant, getattr(torch, params.compute_dtype))
        model.to("cuda")  # moving Params4bit to the GPU is what quantizes them
        config = LoraConfig(
            r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout, target_modules=targets,
            layers_to_transform=layers, use_rslora=params.use_rslora,
            init_lora_weights=True if params.init == "default" else params.init, bias="none",
        )
        peft_model = get_peft_model(model, config)
        unfreeze_peft_head(peft_model)
        return QLoraPrepared(peft_model, describe=f"QLoRA r={params.rank} on {targets}, {params.quant_type} base")


def quantize_linears(module, quant_type: str, double_quant: bool, compute_dtype) -> None:
    """Replace every nn.Linear under `module` by a bitsandbytes Linear4bit holding the same weights (quantized
    when moved to the GPU)."""
    import bitsandbytes as bnb
    from torch import nn

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type=quant_type)
            q.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False,
                                         compress_statistics=double_quant, quant_type=quant_type)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data.clone(), requires_grad=False)
            setattr(module, name, q)
        else:
            quantize_linears(child, quant_type, double_quant, compute_dtype)
