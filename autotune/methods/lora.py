"""`lora`: low-rank adapters via peft on the chosen linear modules (optionally only some layers); the
classifier head trains densely. Export merges the adapters into the weights (`merge_and_unload`)."""

from __future__ import annotations

from pydantic import Field

from autotune.errors import TrialFailed
from autotune.methods.base import Method, MethodParams, Prepared, encoder_layers


class LoraParams(MethodParams):
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="Peak AdamW learning rate.")
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value"], min_length=1, description="Names of the linear modules to adapt."
    )
    layers: list[int] | None = Field(None, min_length=1, description="0-based encoder layers to adapt (null = all).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")


class LoraPrepared(Prepared):
    def export(self):
        return self.model.merge_and_unload()


class LoraMethod(Method):
    name = "lora"
    cost_rank = 30  # no weight gradients or optimizer state for the encoder
    summary = "low-rank adapters (peft), merged at export"
    Params = LoraParams

    def apply(self, model, params: LoraParams, ctx):
        from peft import LoraConfig, get_peft_model

        n_layers = len(encoder_layers(model))
        if params.layers is not None:
            bad = [i for i in params.layers if not 0 <= i < n_layers]
            if bad:
                raise TrialFailed(f"lora.layers: layer(s) {bad} do not exist (the model has {n_layers} layers: 0..{n_layers - 1})")
        present = {name.rsplit(".", 1)[-1] for name, _ in model.encoder.named_modules()}
        missing = [m for m in params.target_modules if m not in present]
        if missing:
            raise TrialFailed(f"lora.target_modules: {missing} not found in {type(model.encoder).__name__}")
        config = LoraConfig(
            r=params.rank,
            lora_alpha=params.alpha,
            lora_dropout=params.dropout,
            # peft's layers_to_transform only works with a list of names; a regex would ignore it.
            target_modules=list(params.target_modules),
            layers_to_transform=sorted(set(params.layers)) if params.layers is not None else None,
            use_rslora=params.use_rslora,
            bias="none",
        )
        peft_model = get_peft_model(model, config)
        for p in peft_model.base_model.model.classifier.parameters():
            p.requires_grad_(True)  # the head is new: it must train densely
        return LoraPrepared(peft_model, describe=f"LoRA r={params.rank} on {params.target_modules}")
