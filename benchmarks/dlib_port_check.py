"""Reference outputs of dlib itself for the port of its face network (tests/data/dlib_face_reference.npz).

Run with a Python that has dlib (e.g. a separate venv: ``pip install dlib-bin numpy pillow``) and
the face_recognition test photos (sdist ``face_recognition==1.3.0``, ``tests/test_images``):

    python benchmarks/dlib_port_check.py MODELS_DIR tests/data/dlib_face_reference.npz \
        IMAGES/obama.jpg IMAGES/obama2.jpg IMAGES/biden.jpg IMAGES/obama_partial_face.jpg

``MODELS_DIR`` is ``face_recognition_models/models`` of the installed package. For every face
dlib's HOG detector finds: dlib's 5-point landmarks, the aligned chip
(``get_face_chip(size=150, padding=0.25)``) and the 128-d descriptor of that chip; the test
checks the PyTorch port on the stored chips against the stored descriptors.
"""

import json
import sys

import dlib
import numpy as np
from PIL import Image


def main() -> None:
    models, out, images = sys.argv[1], sys.argv[2], sys.argv[3:]
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(f"{models}/shape_predictor_5_face_landmarks.dat")
    network = dlib.face_recognition_model_v1(f"{models}/dlib_face_recognition_resnet_model_v1.dat")
    chips, descriptors, meta = [], [], []
    for path in images:
        picture = np.asarray(Image.open(path).convert("RGB"))
        for i, box in enumerate(detector(picture, 1)):
            shape = shapes(picture, box)
            chip = dlib.get_face_chip(picture, shape, size=150, padding=0.25)
            chips.append(chip)
            descriptors.append(np.array(network.compute_face_descriptor(chip)))
            meta.append({"image": path.split("/")[-1], "face": i,
                         "box": [box.left(), box.top(), box.right(), box.bottom()],
                         "landmarks5": [[p.x, p.y] for p in shape.parts()]})
    np.savez_compressed(out, chips=np.stack(chips), descriptors=np.stack(descriptors),
                        meta=json.dumps({"dlib": dlib.__version__, "faces": meta}))
    print(f"{len(chips)} faces, dlib {dlib.__version__} -> {out}")


if __name__ == "__main__":
    main()
