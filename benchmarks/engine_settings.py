"""What the allocator setting and bfloat16 do to the conditional maps (not a test).

For two models, each setting runs in a fresh process (``--rounds`` times, interleaved; the
minimum wall time is reported, since noise here only adds time):

* **demo**: EfficientNet-Lite0 (``conceptree demo``'s model, depthwise separable) on
  scikit-image's chelsea: 192 maps (96 channels each of ``blocks.4.0.conv_pw`` and
  ``blocks.5.3.conv_pwl``), batch 32, pooled to 56x56.
* **resnet34**: torchvision ResNet-34 (random weights, seed 0) at 224x224: 64 maps (32 channels
  each of ``layer3.0.conv2`` and ``layer4.1.conv2``).

Settings: glibc ``malloc`` as is (``plain``) or :func:`conceptree.runtime.tune_allocator`
(``tuned``); the engine in float32 or ``dtype=torch.bfloat16``. Recorded: wall, user and
system seconds, minor page faults and peak RSS of the maps (``getrusage``), and for bfloat16
the pooled maps' agreement with float32 (cosine per map, max error relative to each map's
max). Writes ``benchmarks/results/engine_settings.json``.

    python benchmarks/engine_settings.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORK = r"""
import json, resource, sys, tempfile, time
import numpy as np, torch
allocator, precision, model_name, dump = sys.argv[1:5]
if allocator == "tuned":
    from conceptree.runtime import tune_allocator
    assert tune_allocator()
from conceptree.attribution import CRPEngine
if model_name == "demo":
    from conceptree.models.loading import load_image, load_model, preprocess
    spec = load_model("default")
    x, _ = preprocess(load_image(None)[0], spec.preprocessing)
    model = spec.model
    channels = {"blocks.4.0.conv_pw": range(96), "blocks.5.3.conv_pwl": range(96)}
else:
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet34().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    channels = {"layer3.0.conv2": range(32), "layer4.1.conv2": range(32)}
engine = CRPEngine(model, dtype=torch.bfloat16 if precision == "bf16" else None)
attribution = engine.attribute(x)
engine.neuron_maps(attribution, channels={next(iter(channels)): range(4)}, map_size=(56, 56))  # warm-up
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
maps = engine.neuron_maps(attribution, channels=channels, map_size=(56, 56))
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
np.save(dump, maps.maps)
print(json.dumps({"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime, "system_s": r1.ru_stime - r0.ru_stime,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "peak_rss_gb": r1.ru_maxrss / 2**20,
                  "maps": len(maps)}))
"""


def run(allocator: str, precision: str, model: str, dump: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORK, allocator, precision, model, str(dump)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(reference, other) -> dict:
    import numpy as np

    a, b = reference.reshape(len(reference), -1).astype(np.float64), other.reshape(len(other), -1).astype(np.float64)
    live = np.linalg.norm(a, axis=1) > 0
    cos = (a * b).sum(1)[live] / np.linalg.norm(a, axis=1)[live] / np.maximum(np.linalg.norm(b, axis=1)[live], 1e-300)
    rel = np.abs(a - b).max(1)[live] / np.abs(a).max(1)[live]
    return {"maps_compared": int(live.sum()), "cosine_min": float(cos.min()), "cosine_median": float(np.median(cos)),
            "max_rel_error_max": float(rel.max()), "max_rel_error_median": float(np.median(rel))}


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_settings.json"))
    args = parser.parse_args()
    import tempfile

    settings = [(a, p) for p in ("fp32", "bf16") for a in ("plain", "tuned")]
    result: dict = {"rounds": args.rounds, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("demo", "resnet34"):
            samples: dict[str, list[dict]] = {f"{a}-{p}": [] for a, p in settings}
            for r in range(args.rounds):
                for a, p in (settings if r % 2 == 0 else settings[::-1]):
                    samples[f"{a}-{p}"].append(run(a, p, model, Path(tmp) / f"{model}-{p}.npy"))
                    print(model, a, p, samples[f"{a}-{p}"][-1], flush=True)
            best = {k: min(v, key=lambda s: s["wall_s"]) for k, v in samples.items()}
            result["models"][model] = {
                "min_wall": best, "samples": samples,
                "speedup_tuned_fp32": best["plain-fp32"]["wall_s"] / best["tuned-fp32"]["wall_s"],
                "speedup_tuned_bf16_vs_tuned_fp32": best["tuned-fp32"]["wall_s"] / best["tuned-bf16"]["wall_s"],
                "bf16_vs_fp32_maps": agreement(np.load(Path(tmp) / f"{model}-fp32.npy"), np.load(Path(tmp) / f"{model}-bf16.npy")),
            }
            print(model, json.dumps({k: v for k, v in result["models"][model].items() if k not in ("samples", "min_wall")}),
                  flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
