"""Concept maps to look at: the default route next to the paper's, on a few dev photos.

For each photo: the photo with its part keypoints, then the 8 largest concepts of
``explain`` with the default options and with the paper's (input-level maps of the same 2,000
neurons, read from the evaluation cache written by ``conceptree evaluate --paper``).

    python benchmarks/concept_figure.py --cache /work/evalcache2 --data ../shared/data/cub_parts \
        --ids 236 1092 2027 --out docs/results/concept_maps_examples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from conceptree.concepts.options import PRESETS
from conceptree.datasets.cub_parts import load_cub_parts
from conceptree.evaluation.runner import cache_model, input_neurons_path, load_input_neurons
from conceptree.explainer import ConceptExplainer
from conceptree.models.loading import load_image
from conceptree.render.pictures import signed_overlay

SHOWN = 8


def overlay(ax, image: np.ndarray, values: np.ndarray | None, title: str) -> None:
    ax.imshow(image if values is None else signed_overlay(image, values))
    ax.axis("off")
    ax.set_title(title, fontsize=6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--ids", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cache = Path(args.cache)
    model_args = cache_model(cache)
    prep = model_args.preprocessing
    spec = model_args.load()
    images = {im.image_id: im for im in load_cub_parts(args.data)[0]}
    fig = Figure(figsize=(1.25 * (SHOWN + 1), 2.7 * len(args.ids)), dpi=150)
    axes = fig.subplots(2 * len(args.ids), SHOWN + 1, squeeze=False)
    paper = PRESETS["paper"]
    ours = ConceptExplainer.from_spec(spec, preprocessing=prep)
    theirs = ConceptExplainer.from_spec(spec, preprocessing=prep, options=paper.replace(max_neurons=2000))
    for row, image_id in enumerate(args.ids):
        image = images[image_id]
        picture, _ = load_image(str(image.path))
        default = ours.explain(picture, target=image.target)
        shown = default.image
        neurons = load_input_neurons(input_neurons_path(cache, image_id, 2000))
        original = theirs.explain(picture, target=image.target, neurons=neurons)
        for offset, (name, result) in enumerate((("default", default), ("paper (2,000 neurons)", original))):
            r = 2 * row + offset
            overlay(axes[r, 0], shown, None, f"{image.species.split('.', 1)[1][:22]}\n{name}, k={result.concepts.k}")
            for c, (concept, cmap) in enumerate(zip(result.concepts.concepts[:SHOWN], result.concept_maps)):
                rep = concept.representative
                overlay(axes[r, c + 1], shown, cmap,
                        f"#{concept.rank} {100 * concept.share:.0f}% n={concept.size}\n{rep.layer}")
            for c in range(len(result.concepts.concepts[:SHOWN]) + 1, SHOWN + 1):
                axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
