"""Many images: one task per image on Ray (local or a cluster), sequential without it."""

from .explain_many import ImageRecord, ModelSource, RunResult, collect_images, explain_many

__all__ = ["ImageRecord", "ModelSource", "RunResult", "collect_images", "explain_many"]
