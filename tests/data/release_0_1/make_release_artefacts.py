"""Artefacts of the previous release (5d549b4) for tests/test_release_compat.py: run with that release's code.

    PYTHONPATH=/tmp/old/src python make_release_artefacts.py OUT
"""
import sys
from pathlib import Path

import torch
from PIL import Image
from skimage import data
from torch import nn

import conceptree
from conceptree import ConceptExplainer
from conceptree.dictionary import build_dictionary
from conceptree.index import build_index
from conceptree.runs import ModelSource


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 5)).eval()


out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(1)
x = torch.rand(1, 3, 32, 32)
torch.save(x, out / "input.pt")
explanation = ConceptExplainer(tiny_model()).explain(x)
explanation.save(out / "explanation")
for name in ("report.html", "concepts.png"):
    (out / "explanation" / name).unlink()
photos = out / "photos"
photos.mkdir(exist_ok=True)
for name in ("chelsea", "coffee", "astronaut", "rocket", "camera"):
    img = getattr(data, name)()
    Image.fromarray(img).convert("RGB").resize((96, 96)).save(photos / f"{name}.png")
index = build_index(photos, ModelSource(), out / "index", executor="local", batch_size=5, progress=False)
build_dictionary(index, out / "dictionary", k=6)
print("made with conceptree", conceptree.__version__, "at", out)
