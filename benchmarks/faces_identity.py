"""Faces as in the paper: dlib's identity ResNet explained on every face the registries give.

    bash benchmarks/faces_photos.sh /tmp/face_photos
    python benchmarks/faces_identity.py --photos /tmp/face_photos --out docs/results/faces_identity

Steps (one heavy job, minutes on 2 cores; run it alone):

1. **Faces**: MTCNN detection and alignment (:mod:`conceptree.faces`) of every photo; chips,
   landmarks and identities in ``OUT/faces.json`` + ``OUT/chips/``.
2. **Gallery**: one prototype per identity (mean embedding of all its chips) in
   ``OUT/gallery.npz`` and the model configuration ``OUT/face_identity.json``; leave-one-out
   identification for identities with several photos (the held-out chip is not in its prototype).
3. **Parts** (``--parts``): ``conceptree evaluate --dataset faces`` on the chips, with the
   thresholds the bird dev species chose (nothing tuned on faces): at-K IoU of our concepts,
   the CAM baselines, CRP-top-K, DCNE and random disks against the landmark regions.
4. **Glasses**: glasses drawn from the eye landmarks (:func:`conceptree.faces.draw_glasses`) and,
   as a control, the same glasses moved down onto the mouth. Each face's concepts (default
   options, its own identity) are traced on both; *eye concepts* against *elsewhere concepts*:
   how often each goes missing (ratio < 0.5) and how much relevance they keep. The rule set
   before the first run (eye concept: ≥ 50 % of the positive map inside the glasses' lens
   ellipses; elsewhere: < 20 %) found no eye concept on any face (the lenses cover 10 % of the
   chip and no concept puts more than 36 % of its map there), so eye concepts are now those with
   at least twice the lens area's share of their map (enrichment ≥ 2), elsewhere ≤ 0.5; the
   first rule's counts are still reported. The edited face is also explained to
   see whether one of its concepts takes up the rims, and whether the identity survives.
5. **Pose**: each face mirrored, and its left or right half occluded with dlib's mean pixel. A
   concept is *lateralised* when ``|s| ≥ 0.5``, ``s = (L − R) / (L + R)`` of its positive map on
   the face's two halves. On the mirror image the same neurons are followed: does ``s`` flip
   (the group follows the content) or stay (tied to the image side)? Occluding the concept's
   own half against the other half: relevance kept. Control: random partitions of the same
   neurons (same sizes and layer mixes, :func:`conceptree.concepts.random_groups.random_partition`).

Writes ``OUT/results.json`` and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

#: (file, identity); None: every face of a group photo, named left to right.
PHOTOS = [
    ("obama.jpg", "Barack Obama"), ("obama2.jpg", "Barack Obama"), ("obama3.jpg", "Barack Obama"),
    ("obama_partial_face.jpg", "Barack Obama"), ("obama_partial_face2.jpg", "Barack Obama"),
    ("biden.jpg", "Joe Biden"), ("astronaut.png", "Eileen Collins"), ("grace_hopper.png", "Grace Hopper"),
    ("Tom_Hanks_54745.png", "Tom Hanks"), ("t1.jpg", None),
]
PAD = 60  # tight crops (an aligned 112x112 face) are padded so the detector sees the whole face
LATERAL = 0.5
EYE_INSIDE, ELSEWHERE = 0.5, 0.2  # the first rule (absolute shares of the map in the lenses)
EYE_ENRICHMENT, ELSEWHERE_ENRICHMENT = 2.0, 0.5  # the rule used (share / the lenses' share of the chip)
MISSING = 0.5


def collect_faces(photos: Path, out: Path) -> list[dict]:
    from conceptree.faces import align_face, detect_faces

    (out / "chips").mkdir(parents=True, exist_ok=True)
    faces = []
    for name, identity in PHOTOS:
        picture = Image.open(photos / name).convert("RGB")
        found = detect_faces(picture)
        offset = 0
        if not found:
            padded = Image.new("RGB", (picture.width + 2 * PAD, picture.height + 2 * PAD), (0, 0, 0))
            padded.paste(picture, (PAD, PAD))
            picture, offset, found = padded, PAD, detect_faces(padded)
        if not found:
            print(f"no face found in {name}")
            continue
        chosen = sorted(found, key=lambda f: f.box[0]) if identity is None else [found[0]]
        for i, face in enumerate(chosen):
            aligned = align_face(picture, face)
            who = identity or f"{Path(name).stem} person {i + 1}"
            fid = f"{Path(name).stem}-{i}"
            Image.fromarray(aligned.chip).save(out / "chips" / f"{fid}.png")
            faces.append({"id": fid, "chip": f"chips/{fid}.png", "identity": who, "source": name,
                          "box": (face.box - offset).round(1).tolist(), "score": round(face.score, 5),
                          "landmarks": aligned.landmarks.round(3).tolist(), "size": 150})
    return faces


def gallery_and_identification(faces: list[dict], out: Path) -> dict:
    from conceptree.models.dlib_face import build_gallery, embed_chips, load_dlib_embedding

    embedding = load_dlib_embedding()
    chips = np.stack([np.asarray(Image.open(out / f["chip"])) for f in faces])
    emb = embed_chips(embedding, chips)
    identities = sorted({f["identity"] for f in faces})
    by_name = {n: chips[[i for i, f in enumerate(faces) if f["identity"] == n]] for n in identities}
    gallery = build_gallery(embedding, by_name)
    gallery.save(out / "gallery.npz")
    (out / "face_identity.json").write_text(json.dumps(
        {"name": "dlib face ResNet + identity head (gallery of the registries' faces)", "spec": "dlib:face-resnet",
         "kwargs": {"gallery": "gallery.npz"}}, indent=1))
    for f in faces:
        f["target"] = gallery.names.index(f["identity"])
    # leave-one-out: the held-out chip is left out of its own identity's prototype
    trials = []
    for i, f in enumerate(faces):
        same = [j for j, g in enumerate(faces) if g["identity"] == f["identity"] and j != i]
        if not same:
            continue
        protos = gallery.prototypes.copy()
        protos[f["target"]] = emb[same].mean(0)
        units = protos / np.linalg.norm(protos, axis=1, keepdims=True)
        scores = units @ emb[i]
        order = np.argsort(-scores)
        trials.append({"id": f["id"], "identity": f["identity"], "top1": gallery.names[int(order[0])],
                       "correct": bool(order[0] == f["target"]),
                       # cosine of the own prototype minus the best other one's (scores = |e| cos)
                       "cosine_margin": float((scores[f["target"]] - np.max(np.delete(scores, f["target"])))
                                              / np.linalg.norm(emb[i])),
                       "dlib_distance_to_own": float(np.linalg.norm(emb[i] - emb[same].mean(0)))})
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    same_id = np.array([[a["identity"] == b["identity"] for b in faces] for a in faces])
    off = ~np.eye(len(faces), dtype=bool)
    return {"identities": len(identities), "faces": len(faces), "loo_trials": trials,
            "loo_accuracy": float(np.mean([t["correct"] for t in trials])) if trials else None,
            "dlib_distance": {"same_identity_max": float(dist[same_id & off].max()) if (same_id & off).any() else None,
                              "other_identity_min": float(dist[~same_id].min()),
                              "threshold": 0.6}}


def alignment_check(photos: Path) -> dict:
    """Our MTCNN-aligned chips against dlib's own pipeline (HOG detector, 5-point shape model,
    ``get_face_chip``) on the photos stored in ``tests/data/dlib_face_reference.npz``: the
    descriptor distance and cosine between the two routes, per face."""
    from conceptree.faces import align_face, detect_faces
    from conceptree.models.dlib_face import embed_chips, load_dlib_embedding

    ref = np.load(Path(__file__).parents[1] / "tests" / "data" / "dlib_face_reference.npz")
    meta = json.loads(str(ref["meta"]))["faces"]
    embedding = load_dlib_embedding()
    rows = []
    for m, theirs in zip(meta, ref["descriptors"]):
        picture = Image.open(photos / m["image"]).convert("RGB")
        box = np.asarray(m["box"], float)
        face = min(detect_faces(picture), key=lambda f: float(np.abs(f.box - box).sum()))
        ours = embed_chips(embedding, align_face(picture, face).chip[None])[0]
        rows.append({"image": m["image"], "distance": float(np.linalg.norm(ours - theirs)),
                     "cosine": float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))})
    return {"faces": rows, "dlib_threshold": 0.6}


def positive_mass(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pos = np.clip(maps, 0, None)
    total = pos.reshape(len(pos), -1).sum(1)
    inside = pos[:, mask].sum(1)
    return np.divide(inside, total, out=np.zeros_like(inside), where=total > 0)


def side_index(maps: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    pos = np.clip(maps, 0, None)
    a, b = pos[:, left].sum(1), pos[:, right].sum(1)
    return np.divide(a - b, a + b, out=np.zeros_like(a), where=(a + b) > 0)


def attribution_of(explainer, chip: np.ndarray, target: int):
    """One LRP pass of ``chip`` for ``target`` (every neuron group on it is read from this pass)."""
    return explainer.engine.attribute(explainer.prepare(Image.fromarray(chip))[0], target)


def group_state(attribution, target: int, groups: list[dict]) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Relevance ``(k,)`` and layer-group maps ``(k, H, W)`` of neuron groups in one pass; predicted class, logit."""
    from conceptree.concepts.layer_maps import layer_group_maps

    rel = np.array([sum(float(attribution.layer_relevance[layer][ch].sum()) for layer, ch in g.items()) for g in groups])
    maps = layer_group_maps(attribution, groups, tuple(attribution.forward.input.shape[-2:]))
    return rel, maps, int(attribution.logits.argmax()), float(attribution.logits[target])


def edits_analysis(faces: list[dict], out: Path, draws: int) -> dict:
    from conceptree import ConceptExplainer
    from conceptree.concepts.random_groups import random_partition
    from conceptree.faces import draw_glasses, lens_mask, mirror, occlude_half, part_regions

    explainer = ConceptExplainer.from_config(str(out / "face_identity.json"))
    rng = np.random.default_rng(0)
    records = []
    for f in tqdm(faces, desc="faces", unit="face"):
        chip = np.asarray(Image.open(out / f["chip"]))
        pts = np.asarray(f["landmarks"])
        regions = part_regions(pts)
        lens = lens_mask(pts)
        original = attribution_of(explainer, chip, f["target"])
        explanation = explainer.explain(Image.fromarray(chip), target=f["target"], attribution=original)
        concepts = explanation.concepts.concepts
        real = [c.groups() for c in concepts]
        randoms = [[c.groups() for c in random_partition(concepts, rng)] for _ in range(draws)]
        sets = {"real": real, **{f"random{i}": g for i, g in enumerate(randoms)}}
        base = {name: group_state(original, f["target"], g) for name, g in sets.items()}
        glasses = draw_glasses(chip, pts)
        shift = (pts[3] + pts[4]) / 2 - (pts[0] + pts[1]) / 2  # eyes -> mouth
        moved = draw_glasses(chip, np.vstack([pts[:2] + shift, pts[2:]]))  # same glasses, on the mouth
        flipped, flipped_pts = mirror(chip, pts)
        edited = {"glasses": glasses, "glasses_on_mouth": moved, "mirror": flipped,
                  "occlude_left": occlude_half(chip, pts, "left"), "occlude_right": occlude_half(chip, pts, "right")}
        passes = {edit: attribution_of(explainer, image, f["target"]) for edit, image in edited.items()}
        record = {"id": f["id"], "identity": f["identity"], "k": len(concepts), "sets": {}}
        for name, groups in sets.items():
            rel0, maps0, pred0, logit0 = base[name]
            s0 = side_index(maps0, regions["face_left"], regions["face_right"])
            entry = {"relevance": rel0.tolist(), "eye_mass": positive_mass(maps0, lens).tolist(), "lens_area": float(lens.mean()),
                     "side": s0.tolist(), "predicted": pred0, "logit": logit0, "edits": {}}
            for edit in edited:
                rel1, maps1, pred1, logit1 = group_state(passes[edit], f["target"], groups)
                item = {"ratio": np.divide(rel1, rel0, out=np.full_like(rel1, np.nan), where=np.abs(rel0) > 0).tolist(),
                        "predicted": pred1, "logit": logit1}
                if edit == "mirror":
                    mirrored = part_regions(flipped_pts)
                    item["side"] = side_index(maps1, mirrored["face_left"], mirrored["face_right"]).tolist()
                entry["edits"][edit] = item
            record["sets"][name] = entry
        # does a concept of the glasses image take up the rims?
        rims = np.abs(glasses.astype(int) - chip.astype(int)).sum(-1) > 30
        on_glasses = explainer.explain(Image.fromarray(glasses), target=f["target"])
        gmaps = on_glasses.concept_maps if hasattr(on_glasses, "concept_maps") else None
        if gmaps is not None:
            rim_mass = positive_mass(np.asarray(gmaps), rims)
            record["glasses_concepts"] = {"rim_mass": rim_mass.tolist(), "rim_area": float(rims.mean()),
                                          "shares": [c.share for c in on_glasses.concepts.concepts]}
        records.append(record)
    return {"faces": records}


def summarise(records: list[dict], draws: int) -> dict:
    def pooled(set_name: str, select, field: str, edit: str) -> np.ndarray:
        vals = []
        for r in records:
            e = r["sets"][set_name]
            for i in range(len(e["relevance"])):
                if select(e, i):
                    vals.append(e["edits"][edit][field][i])
        return np.asarray(vals, float)

    out: dict = {}
    names = ["real"] + [f"random{i}" for i in range(draws)]
    is_eye = lambda e, i: e["eye_mass"][i] >= EYE_ENRICHMENT * e["lens_area"] and e["relevance"][i] > 0  # noqa: E731
    is_else = lambda e, i: e["eye_mass"][i] <= ELSEWHERE_ENRICHMENT * e["lens_area"] and e["relevance"][i] > 0  # noqa: E731
    for name in names:
        row = {"first_rule_counts": {
            "eye": sum(1 for r in records for i, m in enumerate(r["sets"][name]["eye_mass"])
                       if m >= EYE_INSIDE and r["sets"][name]["relevance"][i] > 0),
            "elsewhere": sum(1 for r in records for i, m in enumerate(r["sets"][name]["eye_mass"])
                             if m < ELSEWHERE and r["sets"][name]["relevance"][i] > 0)}}
        for edit in ("glasses", "glasses_on_mouth"):
            for label, sel in (("eye", is_eye), ("elsewhere", is_else)):
                r = pooled(name, sel, "ratio", edit)
                row[f"{edit}:{label}"] = {"n": int(len(r)), "missing": float(np.mean(r < MISSING)) if len(r) else None,
                                          "median_ratio": float(np.nanmedian(r)) if len(r) else None}
        lateral = lambda e, i: abs(e["side"][i]) >= LATERAL and e["relevance"][i] > 0  # noqa: E731
        s0 = np.asarray([e["side"][i] for r in records for e in [r["sets"][name]] for i in range(len(e["side"])) if lateral(e, i)])
        s1 = pooled(name, lateral, "side", "mirror")
        ratio_m = pooled(name, lateral, "ratio", "mirror")
        n_pos = sum(1 for r in records for i in range(len(r["sets"][name]["side"])) if r["sets"][name]["relevance"][i] > 0)
        own, other = [], []
        for r in records:
            e = r["sets"][name]
            for i in range(len(e["side"])):
                if lateral(e, i):
                    left_side = e["side"][i] > 0
                    own.append(e["edits"]["occlude_left" if left_side else "occlude_right"]["ratio"][i])
                    other.append(e["edits"]["occlude_right" if left_side else "occlude_left"]["ratio"][i])
        quartiles = lambda x: np.round(np.nanpercentile(x, [25, 50, 75]), 3).tolist() if len(x) else None  # noqa: E731
        row["lateralised"] = {"n": int(len(s0)), "fraction": float(len(s0) / max(n_pos, 1)),
                              "mirror_flips": float(np.mean(np.sign(s1) == -np.sign(s0))) if len(s0) else None,
                              "mirror_kept_relevance_quartiles": quartiles(ratio_m),
                              "occlude_own_half_ratio_quartiles": quartiles(own),
                              "occlude_other_half_ratio_quartiles": quartiles(other),
                              "own_half_missing": float(np.mean(np.asarray(own) < MISSING)) if own else None,
                              "other_half_missing": float(np.mean(np.asarray(other) < MISSING)) if other else None}
        out[name] = row
    identity = {edit: float(np.mean([r["sets"]["real"]["edits"][edit]["predicted"] == r["sets"]["real"]["predicted"]
                                     for r in records])) for edit in records[0]["sets"]["real"]["edits"]}
    out["identity_kept"] = identity
    rims = [r["glasses_concepts"] for r in records if "glasses_concepts" in r]
    if rims:
        best = [max(g["rim_mass"]) if g["rim_mass"] else 0.0 for g in rims]
        out["glasses_rim_concepts"] = {"faces": len(rims), "rim_area_mean": float(np.mean([g["rim_area"] for g in rims])),
                                       "max_rim_mass_median": float(np.median(best)),
                                       "faces_with_rim_concept": int(sum(b >= 0.5 for b in best))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", action="store_true", help="also run the parts evaluation (baselines: the slow part)")
    ap.add_argument("--draws", type=int, default=2, help="random partitions per face (controls)")
    ap.add_argument("--cache", default="benchmarks/cache/faces_parts", help="the parts evaluation's map cache")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    faces = collect_faces(Path(args.photos), out)
    ident = gallery_and_identification(faces, out)
    (out / "faces.json").write_text(json.dumps({"faces": faces}, indent=1))
    result = {"identification": ident, "alignment_vs_dlib": alignment_check(Path(args.photos))}
    if args.parts:
        from conceptree.evaluation.evaluate import evaluate
        from conceptree.evaluation.runner import EvaluationConfig
        from conceptree.tasks import ModelSource

        evaluation = evaluate(out, ModelSource(config=str(out / "face_identity.json")), out=out / "parts",
                              cache=args.cache, config=EvaluationConfig(region_rules=("disks",)),  # landmark regions: one rule
                              dataset="faces", thresholds="docs/results/cub_parts_dev/thresholds.json", progress=True,
                              command="benchmarks/faces_identity.py --parts")
        result["parts"] = {"at_k": evaluation.summary.get("at_k"), "table": str(out / "parts" / "table.md")}
    edits = edits_analysis(faces, out, args.draws)
    result["edits"] = summarise(edits["faces"], args.draws)
    result["per_face"] = edits["faces"]
    result["wall_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_face",)}, indent=1)[:6000])


if __name__ == "__main__":
    main()
