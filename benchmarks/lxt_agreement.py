"""Agreement of the engine's CP-LRP with LXT 2.1 on torchvision's ``vit_b_16`` (issue 37).

``benchmarks/lxt_reference.py`` (run in LXT's own environment, see its docstring) saves LXT's
gradient x input relevances of a random-weight ``vit_b_16``; this script explains the same model and
input with the engine under the matching rule set and writes the largest relative differences:

* the matching composite: the epsilon rule for convolutions and dense layers with no flat first
  layer (LXT's gradient x input is LRP-0 through every linear map), ``zero_bias=False`` (biases,
  the class token and the position embedding absorb their shares, as under gradient x input), and
  stabilisers of 1e-12 instead of LXT's none;
* the rules LXT's ``cp_LRP`` map sets and the engine's own: GELU identity, LayerNorm with its
  standard deviation constant (:class:`~conceptree.attribution.rules.TokenLayerNormRule`),
  attention with queries and keys constant (:class:`~conceptree.attribution.rules.AttentionRule`).

Relative difference: ``max |ours - LXT| / max |LXT|`` per tensor (the heatmap, the patch embedding's
output relevance, and the MLP hidden relevance of blocks 0, 5 and 11, class token included).

    .venv/bin/python benchmarks/lxt_agreement.py --reference /tmp/lxt_reference --out benchmarks/results/lxt_agreement.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models import vision_transformer

from conceptree.attribution import Composite, CRPEngine
from conceptree.attribution.specs import Epsilon

LAYERS = ["conv_proj", "encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_5.mlp.0",
          "encoder.layers.encoder_layer_11.mlp.0"]
#: LXT's gradient x input, in the engine's terms
MATCHING = Composite("epsilon-plus", zero_bias=False, epsilon=1e-12, stabilizer=1e-12,
                     layer_map={"conv": Epsilon(epsilon=1e-12), "linear": Epsilon(epsilon=1e-12)}, first_layer_map={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="/tmp/lxt_reference")
    parser.add_argument("--out", default="benchmarks/results/lxt_agreement.json")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    args = parser.parse_args()
    ref = np.load(Path(args.reference) / "reference.npz")
    model = vision_transformer.vit_b_16()
    model.load_state_dict(torch.load(Path(args.reference) / "vit_b_16_seed0.pth", weights_only=True))
    dtype = getattr(torch, args.dtype)
    engine = CRPEngine(model.eval(), MATCHING, layers=LAYERS, dtype=dtype)
    x = torch.from_numpy(ref["input"]).to(dtype)
    attribution = engine.attribute(x, target=int(ref["target"]))
    rows = {"heatmap": (attribution.heatmap.double().numpy(), ref["heatmap"])}
    for name in LAYERS:
        grid = attribution.layer_relevance[name].double()
        if name in attribution.token_relevance:  # (C, h, w) + (C, prefix) -> LXT's (N, C)
            ours = torch.cat([attribution.token_relevance[name].double(), grid.flatten(1)], 1).T.numpy()
        else:
            ours = grid.numpy()
        rows[name] = (ours, ref[name])
    result = {
        "model": "torchvision vit_b_16, random weights (seed 0, head seed 3), input randn seed 1",
        "lxt": str(ref["lxt_version"]), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "machine": platform.machine(), "engine_dtype": args.dtype, "target": int(ref["target"]),
        "logit": float(ref["logit"]), "heatmap_sum_lxt": float(ref["heatmap"].sum()),
        "heatmap_sum_ours": float(attribution.heatmap.sum()),
        "max_relative_difference": {}, "relevance_sum": {},
        "command": "/tmp/lxtenv/bin/python benchmarks/lxt_reference.py --out /tmp/lxt_reference && "
                   ".venv/bin/python benchmarks/lxt_agreement.py --reference /tmp/lxt_reference",
    }
    for name, (ours, theirs) in rows.items():
        theirs = theirs.astype(np.float64)
        result["max_relative_difference"][name] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        result["relevance_sum"][name] = {"ours": float(ours.sum()), "lxt": float(theirs.sum())}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["max_relative_difference"], indent=1))


if __name__ == "__main__":
    main()
