"""LXT's side of the agreement check (run it with LXT's own environment, never ours: LXT's licence grants
no patent rights, so it is not a dependency). Builds torchvision's ``vit_b_16`` with random weights
(seed 0; the zero-initialised head drawn with seed 3), patches it with LXT 2.1's CP-LRP map
(``lxt.efficient.models.vit_torch.cp_LRP``: GELU identity, LayerNorm with its std detached, attention
with queries and keys detached) and saves gradient x input relevances of the target logit:

* ``heatmap`` ``(224, 224)``: input relevance summed over colours;
* ``<layer>`` for ``conv_proj`` and the MLP hidden layers of blocks 0, 5 and 11: output x its gradient;
* the state dict and the input, so that ``benchmarks/lxt_agreement.py`` explains the same model.

    python -m venv /tmp/lxtenv && /tmp/lxtenv/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers zennit==0.5.1
    /tmp/lxtenv/bin/pip install --no-deps lxt==2.1
    /tmp/lxtenv/bin/python benchmarks/lxt_reference.py --out /tmp/lxt_reference
    .venv/bin/python benchmarks/lxt_agreement.py --reference /tmp/lxt_reference
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torchvision.models import vision_transformer

LAYERS = ["conv_proj", "encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_5.mlp.0",
          "encoder.layers.encoder_layer_11.mlp.0"]


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    model = vision_transformer.vit_b_16()
    with torch.no_grad():
        model.heads.head.weight.copy_(0.02 * torch.randn(model.heads.head.weight.shape,
                                                         generator=torch.Generator().manual_seed(3)))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/lxt_reference")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build()
    torch.save(model.state_dict(), out / "vit_b_16_seed0.pth")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    import lxt
    from lxt.efficient import monkey_patch
    from lxt.efficient.models.vit_torch import cp_LRP

    monkey_patch(vision_transformer, cp_LRP, verbose=True)
    model = build()
    model.load_state_dict(torch.load(out / "vit_b_16_seed0.pth", weights_only=True))
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    for name in LAYERS:
        model.get_submodule(name).register_forward_hook(keep(name))
    xin = x.clone().requires_grad_(True)
    logits = model(xin)
    target = int(logits.argmax())
    logits[0, target].backward()
    saved = {"input": x.numpy(), "target": np.array(target), "logit": logits[0, target].detach().numpy(),
             "heatmap": (xin * xin.grad).sum(1)[0].detach().numpy(), "lxt_version": np.array(getattr(lxt, "__version__", "2.1"))}
    for name in LAYERS:
        saved[name] = (outputs[name] * outputs[name].grad)[0].detach().numpy()
    np.savez(out / "reference.npz", **saved)
    print("target", target, "logit", float(saved["logit"]), "heatmap sum", float(saved["heatmap"].sum()))


if __name__ == "__main__":
    main()
