"""Write the cub-expert test fixture: drawn masks encoded by Label Studio's own encoder.

Needs ``label-studio-converter`` (0.0.59 was used): ``pip install label-studio-converter``.
Run from this folder: ``python make_fixture.py``. Writes ``saliency_maps/annotator1/...`` (the
Label Studio JSON-MIN exports) and ``expected_masks.npz`` (the masks as drawn).
"""

import json
from pathlib import Path

import numpy as np
from label_studio_converter.brush import mask2rle


def disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def main() -> None:
    here = Path(__file__).parent
    drawn = {}
    # image 1: 30 x 40 (H x W), two "Eye" regions (OR-ed), a "Beak" box, a "Wing" ellipse
    h, w = 30, 40
    beak = np.zeros((h, w), bool)
    beak[10:14, 30:39] = True
    eye_a, eye_b = disk(h, w, 8, 24, 2), disk(h, w, 9, 18, 1)
    wing = ((np.mgrid[0:h, 0:w][0] - 20) / 6.0) ** 2 + ((np.mgrid[0:h, 0:w][1] - 12) / 10.0) ** 2 <= 1
    drawn["Black_Footed_Albatross_0001_796111"] = {"Beak": beak, "Eye": eye_a | eye_b, "Wing": wing}
    regions = [("Beak", beak), ("Eye", eye_a), ("Eye", eye_b), ("Wing", wing)]
    task1 = {
        "image": "/data/upload/3/5f1e2d3c-Black_Footed_Albatross_0001_796111.jpg",
        "id": 1,
        "tag": [{"format": "rle", "rle": mask2rle(m.astype(np.uint8) * 255), "brushlabels": [label],
                 "original_width": w, "original_height": h} for label, m in regions],
    }
    # image 2: 24 x 20, only a "Beak" region with a checkerboard edge (short runs: literal chunks)
    h2, w2 = 24, 20
    beak2 = np.zeros((h2, w2), bool)
    beak2[4:9, 3:15] = True
    beak2[9, 3:15:2] = True
    drawn["Laysan_Albatross_0002_1027"] = {"Beak": beak2}
    task2 = {
        "image": "/data/upload/3/aa00bb11-Laysan_Albatross_0002_1027.jpg",
        "id": 2,
        "tag": [{"format": "rle", "rle": mask2rle(beak2.astype(np.uint8) * 255), "brushlabels": ["Beak"],
                 "original_width": w2, "original_height": h2}],
    }
    for folder, task in (("001.Black_footed_Albatross", task1), ("002.Laysan_Albatross", task2)):
        out = here / "saliency_maps" / "annotator1" / folder
        out.mkdir(parents=True, exist_ok=True)
        (out / "export.json").write_text(json.dumps([task]))
    np.savez_compressed(here / "expected_masks.npz", **{f"{img}/{lab}": m for img, d in drawn.items() for lab, m in d.items()})


if __name__ == "__main__":
    main()
