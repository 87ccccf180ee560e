"""`ia3`: (IA)^3 via peft (Liu et al. 2022): learned vectors that rescale the keys, the values and the input
of the feed-forward output layer, plus the classifier. The fewest trained entries of any adapter (one
vector per adapted module); export folds the scales into the weights (`merge_and_unload`).

Targets follow peft's defaults for BERT: `key`, `value` and `output.dense` (a dotted suffix: the attention
output projection and the block's feed-forward output), the `output.dense` ones scaled on their input.
`feedforward: false` keeps keys and values only. DistilBERT-like names are mapped likewise.
"""

from __future__ import annotations

from pydantic import Field

from autotune.errors import TrialFailed
from autotune.methods.base import Method, MethodParams, Prepared, check_layers, encoder_layers
from autotune.methods.lora import unfreeze_peft_head

TARGETS = {  # naming family marker -> (key/value modules, feed-forward modules scaled on their input)
    "key": (["key", "value"], ["output.dense"]),
    "k_lin": (["k_lin", "v_lin"], ["lin2"]),
}


class Ia3Params(MethodParams):
    learning_rate: float = Field(3e-3, gt=0, le=1.0, description="Peak AdamW learning rate (IA3 takes a large one).")
    feedforward: bool = Field(True, description="Also rescale the input of the feed-forward output layers (as the paper).")
    layers: list[int] | None = Field(None, min_length=1, description="0-based encoder layers to adapt (null = all).")


class Ia3Prepared(Prepared):
    def param_groups(self, weight_decay):
        """No decay on the scaling vectors: they start at 1, and decay would pull them towards 0 (off)."""
        groups = super().param_groups(weight_decay)
        scales = {id(p) for n, p in self.trainable_named_parameters() if ".ia3_l." in n}
        out = [{"params": [p for p in g["params"] if id(p) not in scales], "weight_decay": g["weight_decay"]}
               for g in groups]
        out.append({"params": [p for g in groups for p in g["params"] if id(p) in scales], "weight_decay": 0.0})
        return [g for g in out if g["params"]]

    def export(self):
        return self.model.merge_and_unload()


class Ia3Method(Method):
    name = "ia3"
    cost_rank = 28  # a handful of vectors: no weight gradients or optimizer state for the encoder
    summary = "(IA)^3 scaling vectors on keys, values, feed-forward (peft), merged at export"
    Params = Ia3Params

    def apply(self, model, params: Ia3Params, ctx):
        from peft import IA3Config, get_peft_model

        layers = check_layers("ia3", params.layers, model)
        leaves = {n.rsplit(".", 1)[-1] for n, _ in model.encoder.named_modules()}
        family = next((k for k in TARGETS if k in leaves), None)
        if family is None:
            raise TrialFailed(f"ia3: no key/value projections known in {type(model.encoder).__name__}")
        attention, feedforward = TARGETS[family]
        if not params.feedforward:
            feedforward = []
        # IA3Config has no layers_to_transform: name the modules in full (peft matches a full name exactly)
        block = {id(m): i for i, layer in enumerate(encoder_layers(model)) for m in layer.modules()}
        wanted = set(layers) if layers is not None else None

        def chosen(suffixes):
            return [n for n, m in model.named_modules() if any(n.endswith("." + s) for s in suffixes)
                    and id(m) in block and (wanted is None or block[id(m)] in wanted)]

        ff_names = chosen(feedforward)
        targets = chosen(attention) + ff_names
        config = IA3Config(target_modules=targets, feedforward_modules=ff_names)
        peft_model = get_peft_model(model, config)
        unfreeze_peft_head(peft_model)
        return Ia3Prepared(peft_model, describe=f"IA3 on {attention + feedforward}" + (f" of layers {layers}" if layers else ""))
