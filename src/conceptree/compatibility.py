"""The artefact compatibility key, in one place: what must match for an index, a concept
dictionary or an explanation to be used with an explainer, or two of them to be mixed.

A key holds the model's parameter hash, the LRP composite with every rule's parameters
(:meth:`~conceptree.attribution.composites.Composite.to_dict`), the layers, the preprocessing,
the target rule and the index format. Composites are compared in their current form: a key
written by the previous release (composite fields ``epsilon``/``stabilizer``, no layer maps) is
read through :meth:`Composite.from_dict`, so it matches a composite with the same rules and
parameters; one that cannot be read is reported as differing in its LRP rules.
"""

from __future__ import annotations

import json
from typing import Any

from .attribution.composites import Composite
from .errors import ConceptreeError

#: version of the index folder layout (``index.json["format"]``, part of the key).
INDEX_FORMAT = 1
#: the key's fields and how a mismatch names them
KEY_FIELDS = {"model_hash": "model parameters (hash)", "composite": "LRP rules", "layers": "layers",
              "preprocessing": "preprocessing", "target": "target rule", "format": "index format"}


def composite_key(composite: Composite) -> dict:
    """A composite as the key records it (every rule with its parameters, added rules by name)."""
    return composite.to_dict()


def canonical_composite(data: Any) -> Any:
    """A stored composite dict in the current form (the previous release's form mapped to it);
    anything unreadable unchanged (it then differs from every composite)."""
    if not isinstance(data, dict):
        return data
    try:
        return json.loads(json.dumps(Composite.from_dict(data).to_dict()))
    except ConceptreeError:
        return data


def index_key(model_hash: str, composite: dict, layers: list[str], preprocessing: dict | None, target: str) -> dict:
    """What must match for two indexes to be mixed, or for an explainer to use an index
    (``composite`` as :func:`composite_key` gives it)."""
    key = {"model_hash": model_hash, "composite": composite, "layers": list(layers),
           "preprocessing": preprocessing, "target": target, "format": INDEX_FORMAT}
    return json.loads(json.dumps(key))  # the JSON form (lists, not tuples): equal after a reload


def key_mismatch(key: dict, model_hash: str, composite: dict, layers: list[str], preprocessing: dict | None) -> list[str]:
    """Names of the fields of a stored ``key`` that differ from an explainer's model hash,
    composite (as :func:`composite_key` gives it), layers and preprocessing."""
    expected = json.loads(json.dumps({**key, "model_hash": model_hash, "composite": composite,
                                      "layers": list(layers), "preprocessing": preprocessing}))
    return key_difference(expected, key)


def key_difference(expected: dict, found: dict) -> list[str]:
    """Names of the key fields that differ (``model parameters (hash)``, ``LRP rules``...); the
    composites compared in their current form (:func:`canonical_composite`)."""
    out = []
    for field, name in KEY_FIELDS.items():
        a, b = expected.get(field), found.get(field)
        if field == "composite":
            a, b = canonical_composite(a), canonical_composite(b)
        if a != b:
            out.append(name)
    return out


def composites_differ(a: Composite | dict, b: Composite | dict) -> bool:
    """Whether two composites (objects or stored dicts, of either release) differ in any rule or parameter."""
    as_dict = [canonical_composite(c.to_dict() if isinstance(c, Composite) else c) for c in (a, b)]
    return as_dict[0] != as_dict[1]
