"""The concept atlas on real photos: 3 CUB dev species the bird model knows, 10 photos each.

1. ``explain-many`` over the 30 photos (Ray, with 1 and with 2 workers, each into a fresh run
   folder; wall times recorded), with the bird model's config and the default options;
2. per species, the explanations whose explained (predicted) class is that species form its
   atlas (``conceptree.runs.atlas``), checked against the part keypoints (mapped into the
   224x224 squashed input; left/right parts merged);
3. ``docs/results/atlas/<species>/atlas.{json,html}`` and ``summary.json``.

    python benchmarks/atlas_cub.py --data ../shared/data/cub_parts --work /tmp/atlas-run \
        --out docs/results/atlas
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECIES = ("010.Red_winged_Blackbird", "016.Painted_Bunting", "047.American_Goldfinch")


def part_name(name: str) -> str:
    return name.replace("left ", "").replace("right ", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True, help="where the per-image explanations go (not committed)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "atlas"))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--reuse", action="store_true", help="build the atlases from the existing run folders")
    args = parser.parse_args()
    from conceptree.explainer import ConceptExplainer
    from conceptree.explanation import Explanation
    from conceptree.runs import ModelSource, build_atlas, explain_many, write_atlas

    data = Path(args.data)
    annotations = json.loads((data / "annotations.json").read_text())["images"]
    chosen = [im for im in annotations if im["species"]["name"] in SPECIES and im["subset"] == "original"]
    chosen.sort(key=lambda im: (im["species"]["name"], im["file"]))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    list_file = work / "photos.txt"
    list_file.write_text("\n".join(str((data / im["file"]).resolve()) for im in chosen) + "\n")
    source = ModelSource(config=str(ROOT / "docs" / "models" / "bird.json"))
    timings = {}
    run_dir = None
    for workers in args.workers:
        run_dir = work / f"run-{workers}w"
        if args.reuse:
            previous = json.loads((Path(args.out) / "summary.json").read_text())["timings"] if (Path(args.out) / "summary.json").exists() else {}
            timings.update({k: v for k, v in previous.items() if k.startswith(f"{workers}_")})
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        result = explain_many(list_file, source, run_dir, executor="ray", workers=workers, progress=False)
        timings[f"{workers}_workers_s"] = time.perf_counter() - t0
        timings[f"{workers}_workers_failed"] = len(result.failed)
        print(f"{workers} worker(s): {timings[f'{workers}_workers_s']:.0f} s, {len(result.failed)} failed", flush=True)
    index = json.loads((run_dir / "index.json").read_text())["images"]
    spec = source.load()
    explainer = ConceptExplainer.from_spec(spec)
    out = Path(args.out)
    summary = {"photos": len(chosen), "species": list(SPECIES), "timings": timings, "run_used": run_dir.name,
               "machine": "2-core x86_64 CPU, local Ray (ray.init with the machine's CPUs)", "atlases": {}}
    for species in SPECIES:
        inat = next(im["species"]["inat_index"] for im in chosen if im["species"]["name"] == species)
        mine = [(r, im) for r, im in zip(index, chosen) if im["species"]["name"] == species]
        kept = [(r, im) for r, im in mine if r["status"] in ("ok", "skipped")]
        explanations = [Explanation.load(run_dir / r["folder"]) for r, _ in kept]
        right = [(e, r, im) for e, (r, im) in zip(explanations, kept) if e.target.index == inat]
        keypoints = {Path(im["file"]).name: {part_name(p): (x * 224 / im["width"], y * 224 / im["height"])
                                             for p, (x, y) in im["parts"].items()} for _, _, im in right}
        atlas, _ = build_atlas([e for e, _, _ in right], [r["folder"] for _, r, _ in right], explainer,
                               keypoints=keypoints)
        write_atlas(atlas, [e for e, _, _ in right], [r["folder"] for _, r, _ in right], out / species)
        recurring = [c for c in atlas.concepts if c.recurring]
        summary["atlases"][species] = {
            "photos": len(mine), "explained_as_this_species": len(right),
            "recurring": [{"id": c.id, "images": c.n_images, "core_neurons": len(c.core),
                           **{k: v for k, v in (c.consistency or {}).items() if k != "parts_seen"}}
                          for c in recurring],
            "rare": sum(not c.recurring for c in atlas.concepts),
        }
        print(species, json.dumps(summary["atlases"][species]), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
