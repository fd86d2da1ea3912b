#!/usr/bin/env bash
# The face photos the registries give (nothing else is reachable here), into one folder:
#   bash benchmarks/faces_photos.sh /tmp/face_photos
# face_recognition 1.3.0 (MIT) sdist: tests/test_images (5 photos of Barack Obama, 1 of Joe Biden);
# insightface 2.1 (MIT code; its sample images) sdist: data/images/t1.jpg (6 people), Tom_Hanks_54745.png;
# scikit-image's astronaut (Eileen Collins, public domain) and matplotlib's grace_hopper (public domain).
set -euo pipefail
out=${1:?usage: faces_photos.sh OUT}
python=${PYTHON:-python}
mkdir -p "$out"
tmp=$(mktemp -d)
"$python" -m pip download -q --no-deps --no-binary :all: face_recognition==1.3.0 insightface==2.1 -d "$tmp"
tar xzf "$tmp"/face_recognition-1.3.0.tar.gz -C "$tmp" face_recognition-1.3.0/tests/test_images
tar xzf "$tmp"/insightface-2.1.tar.gz -C "$tmp" insightface-2.1/insightface/data/images/t1.jpg insightface-2.1/insightface/data/images/Tom_Hanks_54745.png
cp "$tmp"/face_recognition-1.3.0/tests/test_images/{obama,obama2,obama3,obama_partial_face,obama_partial_face2,biden}.jpg "$out"/
cp "$tmp"/insightface-2.1/insightface/data/images/{t1.jpg,Tom_Hanks_54745.png} "$out"/
"$python" - "$out" <<'PY'
import sys
from PIL import Image
from skimage import data
import matplotlib.cbook as cbook
out = sys.argv[1]
Image.fromarray(data.astronaut()).save(f"{out}/astronaut.png")
with cbook.get_sample_data("grace_hopper.jpg") as f:
    Image.open(f).convert("RGB").save(f"{out}/grace_hopper.png")
PY
rm -rf "$tmp"
ls "$out"
