"""Which attention-based families the CRP engine explains: status, neurons, conservation, speed.

The zoo is the complement of ``benchmarks/architectures.py``'s: every timm module that script skips
as **attention-based** (its filter :func:`architectures.timm_family`, computed, not hand-made),
one small variant each, plus torchvision's ``vit_b_16``, ``swin_t`` and ``maxvit_t``, each at its own
input size (one larger than 448 at 224 where its constructor takes ``img_size``). Random
weights with a fixed seed (BatchNorm statistics randomised as there; zero-initialised dense layers,
such as torchvision's ViT head, drawn at random), each at its own input size.

For each family:

* status: ``ok`` or the engine's one-line refusal;
* selected layers and neurons (conv channels and the MLP hidden channels of token layers);
* conservation error. In a token model the class (and register) tokens enter as constants
  (``torch.cat`` of a parameter with the patch tokens) and the token LayerNorms' biases keep their
  shares: that relevance is absorbed, as a bias's, and *reported*, not an error
  (:meth:`CRPEngine.absorbed_by_constants`). So for the most relevant and one random channel of every
  selected layer ``err = |sum(y_p) + c_p - r_p| / max|R_layer|``, with ``c_p`` what the constants
  absorbed of ``p``'s relevance, and likewise ``|sum(heatmap) + c - logit| / |logit|`` for the heatmap;
* ``absorbed``: ``c / logit``, the constants' share of the logit;
* seconds for one LRP pass and for the conditional maps of 32 channels of the deepest selected layer.

    python benchmarks/attention_zoo.py --out benchmarks/results/attention_zoo.json --table docs/architectures.md

The table replaces the section of ``--table`` after :data:`MARKER` (``benchmarks/architectures.py`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from architectures import randomise_batchnorm, timm_family  # noqa: E402

from conceptree.attribution import CRPEngine  # noqa: E402

TORCHVISION = ["vit_b_16", "swin_t", "maxvit_t"]
#: a family whose own input is larger than MAX_SIDE runs at SMALL_SIDE where its constructor takes img_size
MAX_SIDE, SMALL_SIDE = 448, 224
#: where the attention families' section of docs/architectures.md begins
MARKER = "<!-- attention families: benchmarks/attention_zoo.py -->"


def build(source: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if source == "torchvision":
            model = getattr(torchvision.models, name)()
        else:
            model = timm.create_model(name, pretrained=False)
            if max(_input_size(model)) > MAX_SIDE:  # a 768-pixel ViT takes minutes per map batch on 2 cores
                try:
                    model = timm.create_model(name, pretrained=False, img_size=SMALL_SIDE)
                    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, SMALL_SIDE, SMALL_SIDE)}
                except TypeError:
                    pass
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # zero-initialised heads (torchvision's ViT) would explain a logit of 0
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.copy_(0.02 * torch.randn(module.weight.shape, generator=gen))
    return randomise_batchnorm(model)


def _input_size(model: torch.nn.Module) -> tuple[int, int]:
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    return int(size[-2]), int(size[-1])


def measure(source: str, name: str) -> dict:
    try:
        return _measure(source, name)
    except Exception as exc:  # noqa: BLE001 - a failure past the first pass is a row too
        return {"family": f"{source}:{name}", "status": f"error: {str(exc).splitlines()[0][:220]}"}


def _measure(source: str, name: str) -> dict:
    row: dict = {"family": f"{source}:{name}"}
    try:
        model = build(source, name)
        height, width = _input_size(model)
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        engine = CRPEngine(model, example_input=x)
        attribution = engine.attribute(x)
        row["lrp_s"] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - the benchmark reports every failure as a row
        row.update(status=f"error: {str(exc).splitlines()[0][:220]}")
        return row
    absorbed = float(engine.absorbed_by_constants(attribution)[0])
    logit = float(attribution.logits[attribution.target])
    heatmap_sum = float(attribution.heatmap.sum())
    rng = np.random.default_rng(0)
    errors = []
    kinds = {layer.kind for layer in engine.layers}
    for layer in engine.layers:
        r = attribution.channel_relevance(layer.name).double()
        scale = float(attribution.layer_relevance[layer.name].abs().max()) or 1.0
        if attribution.token_relevance.get(layer.name, torch.zeros(0)).numel():
            scale = max(scale, float(attribution.token_relevance[layer.name].abs().max()))
        chans = sorted({int(r.abs().argmax()), int(rng.integers(layer.channels))})
        maps = engine.neuron_maps(attribution, batch_size=8, channels={layer.name: chans})
        kept = engine.absorbed_by_constants(attribution, [{layer.name: [c]} for c in chans])
        errors += [abs(float(maps.map_sums[i] + kept[i] - r[c])) / scale for i, c in enumerate(chans)]
    deepest = engine.layers[-1]
    top = torch.topk(attribution.channel_relevance(deepest.name).abs(), min(32, deepest.channels)).indices.tolist()
    t0 = time.perf_counter()
    engine.neuron_maps(attribution, batch_size=32, channels={deepest.name: top})
    row.update(
        status="ok", size=f"{height}x{width}", layers=len(engine.layers), kinds=sorted(kinds),
        neurons=int(sum(layer.channels for layer in engine.layers)),
        conservation_error=float(max(errors)), logit=logit, heatmap_sum=heatmap_sum,
        absorbed_share=absorbed / logit if logit else float("nan"),
        heatmap_error=abs(heatmap_sum + absorbed - logit) / max(abs(logit), 1e-12),
        maps32_s=time.perf_counter() - t0,
    )
    return row


def conserving(row: dict) -> bool:
    return row["status"] == "ok" and row["conservation_error"] <= 1e-3 and row["heatmap_error"] <= 1e-2


def table(rows: list[dict]) -> str:
    timm_rows = [r for r in rows if r["family"].startswith("timm:")]
    ok = [r for r in timm_rows if r["status"] == "ok"]
    lines = [
        MARKER,
        "",
        "# Attention-based families",
        "",
        "Generated by `python benchmarks/attention_zoo.py` (random weights, fixed seed, each model at its own input size, or 224 above 448;",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, {platform.machine()} CPU,",
        "2 cores). The zoo: every timm module that `benchmarks/architectures.py` skips as attention-based, one small",
        "variant each, and torchvision's three transformers. Its docstring defines the columns.",
        "",
        f"**timm: {len(ok)} of {len(timm_rows)} attention-based families explained, "
        f"{sum(conserving(r) for r in ok)} of them conserving** (error ≤ 1e-3, heatmap error ≤ 1e-2, both counting the",
        "relevance that constants absorb). The rest are refused in one line, with the reason below. A nan error: the relevance",
        "overflows float32 on the random weights (LeViT: 1e36 after cancelling sums; not yet rerun in float64).",
        "",
        "*absorbed*: share of the logit's relevance that ends on constants (class/register tokens, token LayerNorm biases);",
        "on random weights it can exceed the logit many times (torchvision's ViT-B: the class token and the biases",
        "absorb and the input receives cancelling amounts), which is why the error is measured with it.",
        "Hybrids (convolutions and attention: the ViT-ResNet hybrid, CPUBone, iFormer, SHViT, SwiftFormer, Visformer,",
        "PVTv2, LeViT) run the CNN and the transformer rules together. CaiT's talking-head dense layers act on",
        "channels-last attention maps and are selected as pointwise layers (their 'channels' are heads).",
        "*LRP s*: engine build and one LRP pass; *32 maps s*: conditional maps of the 32 most relevant channels of the",
        "deepest selected layer.",
        "",
        "| family | status | layers | neurons | size | conservation error | heatmap error | absorbed | LRP s | 32 maps s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        module = f" ({r['module']})" if r.get("module") else ""
        if r["status"] != "ok":
            lines.append(f"| {r['family']}{module} | refused | | | | | | | | |")
            continue
        lines.append(f"| {r['family']}{module} | ok | {r['layers']} | {r['neurons']:,} | {r['size']} | "
                     f"{r['conservation_error']:.1e} | {r['heatmap_error']:.1e} | {r['absorbed_share']:+.1%} | "
                     f"{r['lrp_s']:.1f} | {r['maps32_s']:.1f} |")
    refused = [r for r in rows if r["status"] != "ok"]
    if refused:
        lines += ["", "## Refused, and why", "", *(f"- `{r['family']}`: {r['status'].removeprefix('error: ')}" for r in refused)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/attention_zoo.json")
    parser.add_argument("--table", default="docs/architectures.md")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--table-only", action="store_true", help="rewrite --table from --out")
    args = parser.parse_args()
    if args.table_only:
        rows = json.loads(Path(args.out).read_text())["rows"]
    else:
        families: list[tuple[str, str, str | None]] = []
        for module in timm.list_modules():
            info = timm_family(module)
            if info["skip"] and info["skip"].startswith("attention-based"):
                families.append(("timm", info["model"], module))
        families += [("torchvision", n, None) for n in TORCHVISION]
        rows = []
        for source, name, module in families:
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            row = measure(source, name)
            row["wall_s"] = time.perf_counter() - t0
            if module:
                row["module"] = module
            print(json.dumps(row), flush=True)
            rows.append(row)
        if args.only and Path(args.out).exists():  # rerun rows replace theirs; the others are kept
            fresh = {row["family"]: row for row in rows}
            kept = json.loads(Path(args.out).read_text())["rows"]
            rows = [fresh.pop(row["family"], row) for row in kept] + list(fresh.values())
        Path(args.out).write_text(json.dumps({"torch": torch.__version__, "timm": timm.__version__, "rows": rows}, indent=1))
    path = Path(args.table)
    before = path.read_text().split(MARKER)[0].rstrip() + "\n\n" if path.exists() else ""
    path.write_text(before + table(rows))


if __name__ == "__main__":
    main()
