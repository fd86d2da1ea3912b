"""What every evaluation dataset yields per photo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class AnnotatedImage:
    """One photo with part regions; datasets fill ``region_masks`` their own way.

    Attributes
    ----------
    image_id, path, species : str, Path, str
    target : int or None
        The model's class for the photo's species (None: unknown to the model).
    width, height : int
        Photo size in pixels; region masks have shape ``(height, width)``.
    """

    image_id: str
    path: Path
    species: str
    target: int | None
    width: int
    height: int

    def region_masks(self) -> dict[str, np.ndarray | None]:
        """Boolean ``(height, width)`` mask per region name (None: not visible)."""
        raise NotImplementedError
