"""How far do the approximations of the paper's route move its concepts, against its own noise?

For the demo (EfficientNet-Lite0, chelsea) and the bird MobileNetV2 on ``parrot.jpg``: the
input-level conditional maps of every neuron, exact and pooled below the 56x56 grid
(``pool_below_map_size``), both clustered by the paper preset; then the strongest neurons
covering 0.99 / 0.95 / 0.9 / 0.8 of ``sum |r_p|`` (``coverage``). Each partition is compared
with the exact one on the neurons both cluster: adjusted Rand index (all, and the neurons
carrying 90 % of ``sum |r_p|``) and the relevance-weighted Jaccard of concepts matched one to
one (Hungarian). Controls, the same clustering of the same exact maps after (a) rounding them
to float16 (what the evaluation cache stores) and (b) a 1e-3 relative perturbation, give the
exact route's own run-to-run scale; (c) the default route (own-layer maps of the 4,000
strongest neurons) gets the same two controls.

    python benchmarks/approximations.py --cache /tmp/approx    # maps are cached there (~20 min)

Writes ``benchmarks/results/approximations.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from conceptree.attribution.engine import NeuronMaps
from conceptree.concepts.concepts import find_concepts
from conceptree.concepts.features import features_for, strongest_neurons
from conceptree.concepts.options import preset
from conceptree.explainer import ConceptExplainer
from conceptree.models.config import load_model_config
from conceptree.models.loading import load_image, load_model
from conceptree.runtime import tune_allocator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "approximations.json"
CASES = {"demo": ("default", None),
         "parrot": (ROOT / "docs" / "models" / "bird.json", ROOT.parent / "shared" / "data" / "photos" / "parrot.jpg")}
COVERAGES = (0.99, 0.95, 0.9, 0.8)


def explainer_and_attribution(case: str):
    model, image = CASES[case]
    spec = load_model("default") if model == "default" else load_model_config(model).load()
    picture, _ = load_image(None if image is None else str(image))
    explainer = ConceptExplainer.from_spec(spec, options="paper")
    x, _, _ = explainer.prepare(picture)
    return explainer, explainer.engine.attribute(x)


def cached_maps(path: Path, compute) -> tuple[NeuronMaps, float]:
    if path.exists():
        with np.load(path) as z:
            return NeuronMaps([str(s) for s in z["layers"]], z["layer_index"], z["channel"], z["relevance"], z["maps"],
                              z["sums"]), float(z["time"])
    start = time.perf_counter()
    maps = compute()
    seconds = time.perf_counter() - start
    np.savez(path, layers=np.array(maps.layers), layer_index=maps.layer_index, channel=maps.channel,
             relevance=maps.relevance, maps=maps.maps, sums=maps.map_sums, time=seconds)
    return maps, seconds


def with_maps(neurons: NeuronMaps, maps: np.ndarray) -> NeuronMaps:
    return NeuronMaps(neurons.layers, neurons.layer_index, neurons.channel, neurons.relevance, maps, neurons.map_sums)


def subset(neurons: NeuronMaps, keep: np.ndarray) -> NeuronMaps:
    return NeuronMaps(neurons.layers, neurons.layer_index[keep], neurons.channel[keep], neurons.relevance[keep],
                      neurons.maps[keep], neurons.map_sums[keep])


def labels(neurons: NeuronMaps, options) -> tuple[dict[tuple[str, int], int], int]:
    concepts = find_concepts(neurons, options.distance, options.method, options.k_range)
    return {(n.layer, n.channel): c.rank for c in concepts.concepts for n in c.neurons}, concepts.k


def agreement(ref: dict, other: dict, relevance: dict) -> dict:
    shared = sorted(set(ref) & set(other))
    a = np.array([ref[n] for n in shared])
    b = np.array([other[n] for n in shared])
    w = np.abs(np.array([relevance[n] for n in shared]))
    order = np.argsort(-w)
    top = order[: int(np.searchsorted(np.cumsum(w[order]) / w.sum(), 0.9)) + 1]
    inter = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(inter, (a, b), w)
    sa, sb = inter.sum(1), inter.sum(0)
    jaccard = np.nan_to_num(inter / np.maximum(sa[:, None] + sb[None, :] - inter, 1e-300))
    rows, cols = linear_sum_assignment(-jaccard)
    return {"shared": len(shared), "ari": float(adjusted_rand_score(a, b)),
            "ari_top90": float(adjusted_rand_score(a[top], b[top])), "n_top90": int(len(top)),
            "matched_weighted_jaccard": float((jaccard[rows, cols] * sa[rows]).sum() / sa.sum())}


def perturbed(neurons: NeuronMaps, seed: int = 0) -> dict[str, NeuronMaps]:
    rng = np.random.default_rng(seed)
    noise = 1 + 1e-3 * rng.standard_normal(neurons.maps.shape).astype(np.float32)
    return {"float16_rounded": with_maps(neurons, neurons.maps.astype(np.float16).astype(np.float32)),
            "noise_1e-3": with_maps(neurons, neurons.maps * noise)}


def run_case(case: str, cache: Path) -> dict:
    explainer, attribution = explainer_and_attribution(case)
    engine, paper = explainer.engine, preset("paper")
    exact, exact_s = cached_maps(cache / f"exact_{case}.npz", lambda: engine.neuron_maps(attribution, map_size=(56, 56)))
    pooled, pooled_s = cached_maps(cache / f"pooled_{case}.npz", lambda: engine.neuron_maps(
        attribution, map_size=(56, 56), pool_below_map_size=True))
    relevance = {(exact.layers[li], int(c)): r for li, c, r in zip(exact.layer_index, exact.channel, exact.relevance)}
    a = exact.maps.reshape(len(exact), -1).astype(np.float64)
    b = pooled.maps.reshape(len(pooled), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    live = norms > 0
    cosine = (a[live] * b[live]).sum(1) / norms[live]
    weight = np.abs(exact.relevance[live])
    out = {"n_neurons": len(exact), "exact_maps_s": exact_s, "pooled_maps_s": pooled_s,
           "pooled_map_cosine": {"min": float(cosine.min()), "p1": float(np.percentile(cosine, 1)),
                                 "median": float(np.median(cosine)),
                                 "relevance_weighted_mean": float((cosine * weight).sum() / weight.sum())},
           "pooled_sum_error_max": float(np.abs(pooled.map_sums - exact.map_sums).max() / np.abs(exact.map_sums).max())}
    ref, out["exact_k"] = labels(exact, paper)
    rows = {}
    for name, neurons in perturbed(exact).items():
        lab, k = labels(neurons, paper)
        rows[f"control: exact, {name}"] = {"k": k, **agreement(ref, lab, relevance)}
    lab, k = labels(pooled, paper)
    rows["pooled below 56x56"] = {"k": k, **agreement(ref, lab, relevance)}
    index = {key: i for i, key in enumerate(zip([exact.layers[li] for li in exact.layer_index], exact.channel.tolist()))}
    for coverage in COVERAGES:
        chosen = strongest_neurons(engine, attribution, None, coverage)
        keep = np.array(sorted(index[(layer, c)] for layer, chans in chosen.items() for c in chans))
        for kind, neurons in (("exact", exact), ("pooled", pooled)):
            lab, k = labels(subset(neurons, keep), paper)
            rows[f"coverage {coverage}, {kind}"] = {"k": k, "n": int(len(keep)), **agreement(ref, lab, relevance)}
    default = preset("default")
    features = features_for(engine, attribution, default)
    default_ref, default_k = labels(features, default)
    frel = {(features.layers[li], int(c)): r for li, c, r in zip(features.layer_index, features.channel, features.relevance)}
    for name, neurons in perturbed(features).items():
        lab, k = labels(neurons, default)
        rows[f"control: default route, {name}"] = {"k": k, "reference_k": default_k, **agreement(default_ref, lab, frel)}
    for name, row in rows.items():
        print(case, f"{name:38s}", json.dumps(row), flush=True)
    out["rows"] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="Folder for the exact and pooled maps (reused when present).")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    tune_allocator()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    result = {case: run_case(case, cache) for case in args.cases}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
