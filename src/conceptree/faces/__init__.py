"""Faces: detection and alignment from MTCNN's five landmarks, part regions from landmarks, and
the edits of the paper's face analyses (glasses, mirror, half occlusion)."""

from .align import AlignedFace, Face, align_face, detect_faces, similarity_transform
from .edits import draw_glasses, lens_mask, mirror, occlude_half
from .regions import PART_NAMES, part_regions

__all__ = ["AlignedFace", "Face", "PART_NAMES", "align_face", "detect_faces", "draw_glasses", "lens_mask", "mirror",
           "occlude_half", "part_regions", "similarity_transform"]
