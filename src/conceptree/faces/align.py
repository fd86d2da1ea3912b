"""Face detection and alignment: MTCNN's five landmarks, a similarity transform to a fixed template.

Detection uses MTCNN (Zhang et al. 2016) with the P/R/O-Net weights that ship in the PyPI wheel
``facenet-pytorch`` (MIT; install it with ``--no-deps``, it pins an old torch). Each face comes
with five points in the image: the eye centres, the nose tip and the mouth corners, ordered
as they appear from image left to right (``left_eye`` is the eye on the image's left, the
person's right eye).

Alignment maps the five points onto :data:`CHIP_TEMPLATE` by the least-squares similarity
transform (rotation, uniform scale, translation; Umeyama 1991) and samples a 150×150 chip
bilinearly. The template is where MTCNN finds these points on dlib's own aligned chips
(``dlib.get_face_chip(size=150, padding=0.25)``; mean over the six faces of
``benchmarks/faces_identity.py --calibrate``), made mirror-symmetric about the chip's vertical
centre line, so a chip here is laid out like the chips dlib's face network was trained on,
and mirroring a chip mirrors the template onto itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

CHIP_SIZE = 150
#: (5, 2) chip coordinates (x, y) of: eye on the image left, eye on the image right, nose tip,
#: mouth corner on the left, mouth corner on the right (module docstring for their origin).
CHIP_TEMPLATE = np.array([[47.8, 45.6], [102.2, 45.6], [75.0, 77.1], [48.5, 104.2], [101.5, 104.2]])
#: faces below this MTCNN probability are not reported.
MIN_SCORE = 0.95


@dataclass
class Face:
    """One detected face: ``box`` (4,) x0, y0, x1, y1; ``score``; ``landmarks`` (5, 2) x, y in the image."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


@dataclass
class AlignedFace:
    """An aligned chip: ``chip`` (150, 150, 3) uint8, ``landmarks`` (5, 2) in chip coordinates,
    ``matrix`` (2, 3) image → chip, and the detection it came from."""

    chip: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray
    face: Face


def _mtcnn(min_face_size: int):
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        raise InputError("face detection needs MTCNN's weights: pip install --no-deps facenet-pytorch") from None
    return MTCNN(keep_all=True, device="cpu", min_face_size=min_face_size, post_process=False)


def detect_faces(image, *, min_score: float = MIN_SCORE, min_face_size: int = 40) -> list[Face]:
    """Faces in ``image`` (PIL image or ``(H, W, 3)`` uint8), most probable first.

    Parameters
    ----------
    image : PIL.Image.Image or np.ndarray
    min_score : float
        MTCNN probability below which a detection is dropped.
    min_face_size : int
        Smallest face searched, in pixels.

    Returns
    -------
    list[Face]
    """
    import torch
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    with torch.no_grad():
        boxes, scores, points = _mtcnn(min_face_size).detect(picture.convert("RGB"), landmarks=True)
    if boxes is None:
        return []
    faces = [Face(np.asarray(b, float), float(s), np.asarray(p, float)) for b, s, p in zip(boxes, scores, points)
             if s is not None and s >= min_score]
    return sorted(faces, key=lambda f: -f.score)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``(2, 3)`` least-squares similarity ``x -> s R x + t`` mapping ``src`` (n, 2) onto ``dst`` (n, 2) (Umeyama)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / a.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def align_face(image, face: Face, *, size: int = CHIP_SIZE, template: np.ndarray = CHIP_TEMPLATE) -> AlignedFace:
    """The ``size``×``size`` chip of ``face`` (template scaled by ``size / 150``), bilinear sampling."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    dst = np.asarray(template, float) * (size / CHIP_SIZE)
    matrix = similarity_transform(face.landmarks, dst)
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]  # chip -> image, what PIL samples with
    chip = picture.convert("RGB").transform((size, size), Image.Transform.AFFINE, tuple(inverse.reshape(-1)),
                                            resample=Image.Resampling.BILINEAR)
    points = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    return AlignedFace(np.asarray(chip), points, matrix, face)
