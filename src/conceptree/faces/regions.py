"""Part regions of an aligned face from its five landmarks, so concept locations are measured.

All sizes are in units of the inter-ocular distance ``d`` (between the two eye centres), so the
regions follow the face's scale; the face's axis is the line from the eyes' midpoint to the
mouth corners' midpoint (the regions rotate with it). Rules (chosen before any measurement,
from average facial proportions; a 5-point model cannot outline hair or a jaw):

- ``left_eye`` / ``right_eye``: ellipses around the eye centres, half-axes 0.30·d (along the eye
  line) × 0.18·d; ``eyes``: their union. "left"/"right" are the image's sides.
- ``nose``: an ellipse on the tip's line along the face's axis, from just below the eye line
  (0.1 of the eyes-to-tip distance) to 0.15·d below the tip, 0.20·d to either side.
- ``mouth``: an ellipse through the mouth corners, half-axes (corner distance / 2 + 0.10·d) × 0.22·d.
- ``forehead``: the band from 0.25·d to 0.85·d above the eye line, as wide as 1.6·d.
- ``face``: an ellipse centred between the eyes' and the mouth's midpoints, half-axes 0.95·d ×
  (1.25·d + half the eyes-to-mouth distance); ``face_left`` / ``face_right``: its halves on the
  image's left and right of the face's axis.
"""

from __future__ import annotations

import numpy as np

PART_NAMES = ("left_eye", "right_eye", "eyes", "nose", "mouth", "forehead", "face", "face_left", "face_right")


def face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The face's frame from its landmarks ``(5, 2)``: eyes' midpoint ``(2,)``, unit vector along the
    eyes (image left → right), unit vector down the face, and ``d`` the inter-ocular distance."""
    left_eye, right_eye = landmarks[0], landmarks[1]
    across = right_eye - left_eye
    d = float(np.linalg.norm(across))
    u = across / d
    v = np.array([-u[1], u[0]])  # u rotated by +90° in image coordinates (y down): points down the face
    return (left_eye + right_eye) / 2, u, v, d


def _ellipse(grid: np.ndarray, centre: np.ndarray, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    rel = grid - centre
    return (rel @ u / a) ** 2 + (rel @ v / b) ** 2 <= 1.0


def part_regions(landmarks: np.ndarray, size: int = 150) -> dict[str, np.ndarray]:
    """Boolean ``(size, size)`` masks of :data:`PART_NAMES` from ``landmarks`` (5, 2) in chip coordinates."""
    pts = np.asarray(landmarks, float)
    eyes_mid, u, v, d = face_frame(pts)
    ys, xs = np.mgrid[0:size, 0:size]
    grid = np.stack([xs + 0.5, ys + 0.5], -1)  # pixel centres
    regions = {
        "left_eye": _ellipse(grid, pts[0], u, v, 0.30 * d, 0.18 * d),
        "right_eye": _ellipse(grid, pts[1], u, v, 0.30 * d, 0.18 * d),
    }
    regions["eyes"] = regions["left_eye"] | regions["right_eye"]
    nose_tip = pts[2]
    down = float((nose_tip - eyes_mid) @ v)  # eyes-to-tip distance along the face's axis
    nose_centre = eyes_mid + u * float((nose_tip - eyes_mid) @ u) + v * (0.55 * down + 0.05 * d)
    regions["nose"] = _ellipse(grid, nose_centre, u, v, 0.20 * d, 0.45 * down + 0.1 * d)
    mouth_mid = (pts[3] + pts[4]) / 2
    half_width = float(np.linalg.norm(pts[4] - pts[3])) / 2
    regions["mouth"] = _ellipse(grid, mouth_mid, u, v, half_width + 0.10 * d, 0.22 * d)
    rel = grid - eyes_mid
    along, depth = rel @ u, rel @ v
    regions["forehead"] = (depth <= -0.25 * d) & (depth >= -0.85 * d) & (np.abs(along) <= 0.8 * d)
    eyes_to_mouth = float((mouth_mid - eyes_mid) @ v)
    face_centre = (eyes_mid + mouth_mid) / 2
    regions["face"] = _ellipse(grid, face_centre, u, v, 0.95 * d, 1.25 * d + eyes_to_mouth / 2)
    axis_dir = (mouth_mid - eyes_mid) / max(np.linalg.norm(mouth_mid - eyes_mid), 1e-9)
    normal = np.array([axis_dir[1], -axis_dir[0]])  # perpendicular to the face's axis, pointing image-right
    side = (grid - eyes_mid) @ normal
    regions["face_left"] = regions["face"] & (side < 0)
    regions["face_right"] = regions["face"] & (side >= 0)
    return regions
