"""Many images: one task per image on Ray (local or a cluster), sequential without it."""

from .atlas import Atlas, AtlasConcept, atlas_from_run, build_atlas, run_explanations, write_atlas
from .explain_many import ImageRecord, ModelSource, RunResult, collect_images, explain_many

__all__ = ["Atlas", "AtlasConcept", "atlas_from_run", "build_atlas", "run_explanations", "write_atlas", "ImageRecord", "ModelSource", "RunResult", "collect_images", "explain_many"]
