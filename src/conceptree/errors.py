"""Exceptions raised by conceptree.

Every error carries a one-line message that names the problem and the fix.
"""

from __future__ import annotations


class ConceptreeError(ValueError):
    """Base class of all conceptree errors (a ``ValueError``)."""


class InputError(ConceptreeError):
    """Bad user input: image, tensor shape, target, layer name, path."""


class UnsupportedModelError(ConceptreeError):
    """The model contains a module or operation the LRP engine cannot propagate through."""


class CheckpointError(ConceptreeError):
    """A checkpoint cannot be loaded safely or does not match the architecture."""


class ModelError(ConceptreeError):
    """The model's own code failed on a well-formed input (its message and the failing node are kept;
    the original exception is the ``__cause__``): not the user's input, e.g. a bug in the model.
    Out-of-memory errors are not wrapped: they propagate as they are."""
