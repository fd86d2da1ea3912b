"""Is a family's conservation error the ``Norm`` rule's stabiliser? Rerun it in float64 with the
stabiliser (and epsilon) at 1e-6 (default), 1e-12 and 0: if the error falls with the stabiliser,
it is the rule's loss at near-cancelling sums, not round-off and not a missing rule.

Same measure as ``benchmarks/architectures.py`` (most relevant and one random channel of every
layer, 96x96, random weights with randomised BatchNorm, seeds as there).

    python benchmarks/stabiliser_check.py fasternet_t0 inception_next_atto --out benchmarks/results/stabiliser_check.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from architectures import build

from conceptree import Composite
from conceptree.attribution import CRPEngine


def worst_error(name: str, stabilizer: float, size: int = 96) -> float:
    model = build("timm", name)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).double()
    engine = CRPEngine(model, Composite(stabilizer=stabilizer, epsilon=stabilizer), example_input=x, dtype=torch.float64)
    attribution = engine.attribute(x)
    rng = np.random.default_rng(0)
    worst = 0.0
    for layer in engine.layers:
        r = attribution.channel_relevance(layer.name)
        channels = sorted({int(r.abs().argmax()), int(rng.integers(layer.channels))})
        maps = engine.neuron_maps(attribution, batch_size=8, channels={layer.name: channels})
        scale = float(attribution.layer_relevance[layer.name].abs().max()) or 1.0
        worst = max(worst, float(np.abs(maps.map_sums - maps.relevance).max()) / scale)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="+", help="timm model names")
    parser.add_argument("--out", default="benchmarks/results/stabiliser_check.json")
    args = parser.parse_args()
    rows = []
    for name in args.families:
        row = {"family": f"timm:{name}", **{f"stabilizer_{s:g}": worst_error(name, s) for s in (1e-6, 1e-12, 0.0)}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).write_text(json.dumps({"dtype": "float64", "size": 96, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
