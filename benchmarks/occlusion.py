"""Occlusion check (issue 6): grey out the head and follow every concept's neuron group.

Run from the project root on the photos of an evaluation cache (its manifest gives the model
and preprocessing); each photo is explained with the default options (`conceptree explain`):

    python benchmarks/occlusion.py --cache /work/evalcache2 --data ../shared/data/cub_parts \
        --out docs/results/occlusion

Writes ``occlusion.json`` (every photo and concept) and prints the markdown summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from occlusion_lib import (  # benchmarks/occlusion_lib.py: next to this script
    HEAD_KEYPOINTS,
    HEAD_RADIUS,
    OcclusionResult,
    head_mask,
    inside_fraction,
    mask_on_grid,
    occlude,
    summarise_occlusion,
)
from tqdm import tqdm

from conceptree.concepts.options import PRESETS
from conceptree.datasets.cub_parts import load_cub_parts
from conceptree.evaluation.runner import cache_model, cache_path
from conceptree.explainer import ConceptExplainer
from conceptree.models.loading import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--example", type=int, default=1, help="save the comparison page of this many photos")
    args = parser.parse_args()
    t0 = time.perf_counter()
    cache = Path(args.cache)
    model_args = cache_model(cache)
    prep = model_args.preprocessing
    spec = model_args.load()
    explainer = ConceptExplainer.from_spec(spec, preprocessing=prep)  # traced once for every photo
    engine = explainer.engine
    images, _ = load_cub_parts(args.data)
    images = [im for im in images if cache_path(cache, im).exists()][: args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[OcclusionResult] = []
    skipped = 0
    for n, image in enumerate(tqdm(images, desc="occlusion", unit="photo")):
        mask = head_mask(image)
        if mask is None:
            skipped += 1
            continue
        picture, _ = load_image(str(image.path))
        x, _, _ = explainer.prepare(picture)
        ref = explainer.explain(picture, target=image.target)
        cmp = explainer.trace(ref, [occlude(picture, mask)], names=["head greyed"])
        grid_mask = mask_on_grid(mask, tuple(x.shape[-2:]))
        inside = inside_fraction(ref.concept_maps, grid_mask)
        (traced,) = cmp.images
        before = engine.attribute(x, image.target)
        total_before = float(sum(before.channel_relevance(layer.name).double().sum() for layer in engine.layers))
        results.append(OcclusionResult(
            image.image_id, image.species, float(grid_mask.mean()), inside,
            np.array([c.ratio for c in traced.concepts]), np.array([c.share for c in ref.concepts.concepts]),
            traced.total_relevance / total_before,
            ref.probability, traced.probability,
        ))
        if n < args.example:
            cmp.save(out / f"example_{image.image_id}")
    summary = {
        f"{'relative' if relative else 'raw'}_inside_{t}": summarise_occlusion(results, t, relative)
        for relative in (False, True) for t in (0.5, 0.3)
    }
    summary.update(head_keypoints=list(HEAD_KEYPOINTS), head_radius=HEAD_RADIUS, skipped_no_head=skipped,
                   wall_s=time.perf_counter() - t0, options=PRESETS["default"].to_dict())
    (out / "occlusion.json").write_text(json.dumps({"summary": summary, "photos": [r.to_dict() for r in results]}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
