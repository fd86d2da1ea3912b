"""Rule specifications: an LRP rule named with its parameters, as plain data (zennit's shape,
``Epsilon(epsilon=...)``, ``Gamma(gamma=...)``).

A specification is what a :class:`~conceptree.attribution.composites.Composite` stores for a
layer kind and what its JSON form records; the rule objects themselves
(:mod:`conceptree.attribution.rules`) are built from it per graph node by the rule table
(:mod:`conceptree.attribution.rule_table`). This module imports neither (nor torch), so a saved
explanation's composite can be read without the engine.

Two specifications are equal when they name the same rule with the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, ClassVar

from ..errors import InputError


@dataclass(frozen=True)
class RuleSpec:
    """Base of the rule specifications: a rule name (:attr:`rule`) and its parameters (the fields)."""

    #: the rule's name in the JSON form (``{"rule": "gamma", "gamma": 0.25, ...}``)
    rule: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        """The rule's parameters (name -> value)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare}

    def with_defaults(self, **values: Any) -> RuleSpec:
        """A copy with those of ``values`` that are parameters of this rule (others ignored)."""
        names = {f.name for f in fields(self) if f.compare}
        given = {k: v for k, v in values.items() if k in names and v is not None}
        return replace(self, **given) if given else self

    @property
    def label(self) -> str:
        """``rule(param=value, ...)``: the rule as one line (error messages, compatibility keys)."""
        return f"{self.rule}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"rule": name, **parameters}``."""
        return {"rule": self.rule, **self.params()}


@dataclass(frozen=True)
class Epsilon(RuleSpec):
    """epsilon: ``z = W x``, stabilised by ``epsilon`` (zennit's ``Epsilon``)."""

    rule: ClassVar[str] = "epsilon"
    epsilon: float = 1e-6


@dataclass(frozen=True)
class ZPlus(RuleSpec):
    """z+: the positive contributions ``W+ x+ + W- x-`` (zennit's ``ZPlus``)."""

    rule: ClassVar[str] = "zplus"
    stabilizer: float = 1e-6


@dataclass(frozen=True)
class Flat(RuleSpec):
    """flat: weights and inputs set to one (zennit's ``Flat``; the layers that read the input)."""

    rule: ClassVar[str] = "flat"
    stabilizer: float = 1e-6


@dataclass(frozen=True)
class Gamma(RuleSpec):
    """LRP-gamma: positive weights strengthened, ``w + gamma * w+`` (zennit's ``Gamma``)."""

    rule: ClassVar[str] = "gamma"
    gamma: float = 0.25
    stabilizer: float = 1e-6


@dataclass(frozen=True)
class Norm(RuleSpec):
    """norm: ``R_i = x_i * R / stab(sum)`` (zennit's ``Norm``): sums, average pooling, upsampling."""

    rule: ClassVar[str] = "norm"
    stabilizer: float = 1e-6


@dataclass(frozen=True)
class Custom(RuleSpec):
    """A user's rule: a factory ``factory(ctx) -> Rule`` named by its ``module.qualname``.

    ``parameters`` are the parameters the factory passes to its rule (e.g. a
    :func:`~conceptree.attribution.rule_table.conv_variant` with ``gamma=0.5``); they are part of
    the equality and the JSON form. ``target`` (the callable) is not: a custom rule read back from
    JSON has a name and parameters only, and cannot be used until it is passed again.
    """

    rule: ClassVar[str] = "custom"
    name: str = ""
    parameters: tuple[tuple[str, Any], ...] = ()
    target: Callable | None = field(default=None, compare=False, repr=False)

    def params(self) -> dict[str, Any]:
        return dict(self.parameters)

    @property
    def label(self) -> str:
        if not self.parameters:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.parameters)})"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "name": self.name, "params": dict(self.parameters)}

    def __call__(self, ctx: Any) -> Any:
        if self.target is None:
            raise InputError(f"the custom rule {self.label} was read back from JSON and cannot be restored; pass it "
                             "again with Composite().with_rule(...) (composite=...)")
        return self.target(ctx)


#: the built-in specifications by their JSON name (read-only)
SPECS: Mapping[str, type[RuleSpec]] = MappingProxyType(
    {cls.rule: cls for cls in (Epsilon, ZPlus, Flat, Gamma, Norm, Custom)})


def custom(factory: Callable, **params: Any) -> Custom:
    """A :class:`Custom` specification of ``factory`` (named by its ``module.qualname``)."""
    return Custom(name=qualified_name(factory), parameters=tuple(sorted(params.items())), target=factory)


def qualified_name(obj: object) -> str:
    """``module.qualname`` of a rule key or factory (a method-name key is its own name)."""
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def spec_from_dict(data: Mapping[str, Any] | str) -> RuleSpec:
    """Inverse of :meth:`RuleSpec.to_dict`; a plain string is a custom rule's name (the previous
    release's form of an added rule)."""
    if isinstance(data, str):
        return Custom(name=data)
    if not isinstance(data, Mapping) or data.get("rule") not in SPECS:
        raise InputError(f"unknown LRP rule {data!r} in a saved composite; use one of {', '.join(SPECS)} "
                         "(or upgrade conceptree if a newer release wrote it)")
    values = {k: v for k, v in data.items() if k != "rule"}
    cls = SPECS[data["rule"]]
    if cls is Custom:
        return Custom(name=str(values.get("name", "")), parameters=tuple(sorted(dict(values.get("params", {})).items())))
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"the saved LRP rule {data['rule']!r} has unknown parameters {unknown}; "
                         "upgrade conceptree to read it")
    return cls(**values)
