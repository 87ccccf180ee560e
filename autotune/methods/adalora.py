"""`adalora`: LoRA whose rank moves between modules during training (Zhang et al. 2023, AdaLoRA; peft).

Each adapted module starts at `init_r` singular triplets (P, Lambda, Q of an SVD-shaped update); after a
warm-up, the triplets of lowest importance (a smoothed |weight x gradient|) are masked out step by step,
on a cubic schedule, until the average rank is `target_r`; the final phase trains the surviving triplets
only. The schedule is planned over the trial's own optimizer steps (`ApplyContext.total_steps`, from the
trial's epochs and batch size): `tinit` and `tfinal` are fractions of that plan, so a space keeps its
meaning whatever the data size. The rank budget is updated after every optimizer step
(`after_optimizer_step` -> peft's `update_and_allocate`, which reads the gradients the step used).

The orthogonality regulariser (`orth_reg_weight`) is added to the training loss only: evaluation losses
stay comparable with other methods. `trainable_params` counts every allocated entry (init_r triplets per
module: masked triplets stay allocated, at zero); `final_ranks()` gives the ranks the budget settled on.
Export merges the masked update into the weights.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from autotune.methods.base import Method, Prepared, layers_of
from autotune.methods.lora import AdapterPlacement, resolve_targets


class AdaLoraParams(AdapterPlacement):
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Peak AdamW learning rate.")
    init_r: int = Field(12, ge=1, le=256, description="Rank every adapted module starts with.")
    target_r: int = Field(4, ge=1, le=256, description="Average rank over the adapted modules at the end of the schedule.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator (the update is scaled by alpha / init_r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    tinit: float = Field(0.1, ge=0.0, lt=1.0, description="Warm-up at init_r before any rank is pruned, as a fraction of the trial's planned steps.")
    tfinal: float = Field(0.2, ge=0.0, lt=1.0, description="Final phase at the settled ranks, as a fraction of the trial's planned steps.")
    deltaT: int = Field(5, ge=1, le=10_000, description="Optimizer steps between two rank re-allocations.")
    orth_reg_weight: float = Field(0.5, ge=0.0, le=10.0, description="Weight of the orthogonality regulariser on P and Q (training loss only).")

    @model_validator(mode="after")
    def _consistent(self):
        if self.target_r > self.init_r:
            raise ValueError(f"target_r <= init_r must hold (got target_r={self.target_r}, init_r={self.init_r})")
        if self.tinit + self.tfinal >= 1.0:
            raise ValueError(f"tinit + tfinal < 1 must hold: the schedule needs a budgeting phase (got {self.tinit + self.tfinal:g})")
        return self


def schedule_steps(params: AdaLoraParams, total_steps: int | None) -> tuple[int, int, int]:
    """(total_step, tinit, tfinal) in optimizer steps for peft. The final forced allocation happens at step
    total - tfinal, and the loop's last step is total - 1: tfinal >= 1 makes sure it happens."""
    total = max(3, int(total_steps or 0))
    tfinal = max(1, int(params.tfinal * total))
    tinit = min(int(params.tinit * total), total - tfinal - 1)
    return total, tinit, tfinal


class AdaLoraPrepared(Prepared):
    def __init__(self, model, init_r: int, describe: str):
        super().__init__(model, describe)
        self.init_r = init_r

    def after_optimizer_step(self, step: int) -> None:
        config = self.model.peft_config["default"]
        if config.rank_pattern is None and step > config.total_step - config.tfinal:
            # a trial restored past its final allocation: the mask is in the restored zeros of lora_E
            config.rank_pattern = {n: (p != 0).view(-1).tolist() for n, p in self.model.model.named_parameters()
                                   if n.endswith("lora_E.default")}
        self.model.update_and_allocate(step)  # reads the gradients of this step: before the next zero_grad

    def final_ranks(self) -> dict[str, int]:
        """Rank of each adapted module now (names such as `0.attention.self.query`: block index first): the budget's mask where one
        was applied, init_r before the first allocation."""
        pattern = self.model.peft_config["default"].rank_pattern or {}  # "<module>.lora_E.default" -> keep mask
        out = {}
        for name, module in self.model.model.named_modules():  # the names peft's rank allocator uses
            if "default" in getattr(module, "lora_E", {}):
                mask = pattern.get(f"{name}.lora_E.default")
                out[name.split("layer.", 1)[-1]] = int(sum(mask)) if mask is not None else self.init_r
        return out

    def export(self):
        return self.model.merge_and_unload()


class AdaLoraMethod(Method):
    name = "adalora"
    cost_rank = 32  # LoRA plus an importance update per step
    summary = "LoRA with a rank budget re-allocated between modules during training (peft), merged at export"
    Params = AdaLoraParams

    def apply(self, model, params: AdaLoraParams, ctx):
        from peft import AdaLoraConfig, get_peft_model

        layers = layers_of("adalora", params, model)
        targets = resolve_targets("adalora", model, params.target_modules, params.target_preset)
        total, tinit, tfinal = schedule_steps(params, ctx.total_steps)
        config = AdaLoraConfig(
            init_r=params.init_r, target_r=params.target_r, lora_alpha=params.alpha, lora_dropout=params.dropout,
            target_modules=targets, layers_to_transform=layers, tinit=tinit, tfinal=tfinal, deltaT=params.deltaT,
            orth_reg_weight=params.orth_reg_weight, total_step=total,
        )
        # the AdaLoRA model itself (not the PeftModel wrapper, whose forward skips the regulariser)
        ada = get_peft_model(model, config).base_model
        for p in ada.model.classifier.parameters():
            p.requires_grad_(True)  # the head is new: it must train densely
        weight = params.orth_reg_weight

        def regularise_in_training_only(module, args):
            module.peft_config["default"].orth_reg_weight = weight if module.training else 0.0

        ada.register_forward_pre_hook(regularise_in_training_only)
        return AdaLoraPrepared(ada, params.init_r, describe=f"AdaLoRA r {params.init_r} -> {params.target_r} on {targets} "
                                                           f"over {total} steps (tinit {tinit}, tfinal {tfinal})")

