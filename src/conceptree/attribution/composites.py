"""LRP composites: which rule, with which parameters, applies to which layer — as data.

A :class:`Composite` is a *layer map* (layer kind -> rule specification with its parameters,
:mod:`conceptree.attribution.specs`), a *first-layer map* (the rules of the conv/dense layers
that read the model input), the two truly global settings ``zero_bias`` and ``dead_units``,
and the rules a user added for module classes, functions or methods (:meth:`Composite.with_rule`).
Named presets (:data:`PRESETS`, read-only) give the layer maps of zennit's composites:

* ``epsilon-plus-flat`` (default): ``conv`` z+, ``linear`` epsilon, ``norm`` norm; the first
  layer flat.
* ``epsilon-plus``: the same without the first-layer map (z+ / epsilon there too).

The layer kinds are ``conv`` (convolutions, also dense layers on channels-last maps, which are
1x1 convolutions), ``linear`` (dense layers) and ``norm`` (residual and stacked sums, average
pooling, sum/mean reductions, upsampling). The rules follow zennit's definitions exactly (see
``tests/test_zennit_agreement.py``):

* ``epsilon``: ``R_in = x * W^T (R / stab_eps(z))`` with ``z = W x + b``.
* ``z+``: ``R_in = x+ * W+^T s + x- * W-^T s``, ``s = R / stab(z+)``, ``z+ = W+ x+ + b+ + W- x-``.
* ``flat``: ``R_in = 1^T (R / stab(1 * 1))``, weights and inputs set to one.
* ``gamma``: the epsilon formula with ``W + gamma * W+``.
* ``norm``: ``R_i = x_i * R / stab(sum)``.
* ``pass`` (elementwise activations, identity, dropout), gradient routing (max pooling),
  index bookkeeping (reshape, concatenation, padding, slicing): no parameters.

``stab(z) = z + eps * sign(z)`` with ``sign(0) = +1``, as in ``zennit.core.stabilize``.

This module is data only: it imports neither torch nor the rule table; the table
(:mod:`conceptree.attribution.rule_table`) is built when the engine asks for it
(:meth:`Composite.rule_table`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ..errors import InputError
from .specs import Custom, Epsilon, Flat, Norm, RuleSpec, ZPlus, custom, qualified_name, spec_from_dict

CompositeName = Literal["epsilon-plus-flat", "epsilon-plus"]
#: the layer kinds of a layer map, in their canonical order
LAYER_KINDS: tuple[str, ...] = ("conv", "linear", "norm")
#: the layer kinds of a first-layer map
FIRST_LAYER_KINDS: tuple[str, ...] = ("conv", "linear")
#: rules that fit each layer kind (custom rules fit every kind)
_FITS: Mapping[str, frozenset[str]] = MappingProxyType({
    "conv": frozenset({"zplus", "epsilon", "flat", "gamma", "custom"}),
    "linear": frozenset({"zplus", "epsilon", "flat", "gamma", "custom"}),
    "norm": frozenset({"norm", "custom"}),
})

SpecPairs = tuple[tuple[str, RuleSpec], ...]


@dataclass(frozen=True)
class Preset:
    """A named composite's layer map and first-layer map (default parameters)."""

    layer_map: SpecPairs
    first_layer_map: SpecPairs


_LAYER_MAP: SpecPairs = (("conv", ZPlus()), ("linear", Epsilon()), ("norm", Norm()))
#: the named composites (read-only)
PRESETS: Mapping[str, Preset] = MappingProxyType({
    "epsilon-plus-flat": Preset(layer_map=_LAYER_MAP, first_layer_map=(("conv", Flat()), ("linear", Flat()))),
    "epsilon-plus": Preset(layer_map=_LAYER_MAP, first_layer_map=()),
})
COMPOSITE_NAMES: tuple[str, ...] = tuple(PRESETS)
#: the keys of the previous release's JSON form (``Composite.to_dict`` before the layer maps)
_OLD_KEYS = frozenset({"name", "epsilon", "stabilizer", "zero_bias", "dead_units", "extra_rules"})
_KEYS = frozenset({"name", "zero_bias", "dead_units", "layer_map", "first_layer_map", "extra_rules"})


@dataclass(frozen=True, init=False)
class Composite:
    """Configuration of the LRP rules: which rule, with which parameters, for which layer.

    Parameters
    ----------
    name : {"epsilon-plus-flat", "epsilon-plus"}
        The preset (:data:`PRESETS`) that gives the maps not passed. ``epsilon-plus-flat``
        (default): epsilon for dense layers, z+ for convolutions, flat for every conv/dense
        layer that reads the model input. ``epsilon-plus``: the same without the flat first layer.
    epsilon : float, optional
        Sets ``epsilon`` of every rule of the layer and first-layer maps that has one (zennit's
        ``epsilon``; the presets' default 1e-6), also of rules passed in ``layer_map``.
    stabilizer : float, optional
        Sets ``stabilizer`` of every rule of the maps that has one (the z+, flat, norm and gamma
        rules; zennit's ``stabilizer``; default 1e-6).
    zero_bias : bool
        If True (default), biases are left out of the z+ and epsilon denominators (zennit's
        ``zero_params=["bias"]``). Then every conditional map conserves its neuron's relevance
        exactly (``sum(y_p) = r_p``) even after BatchNorm is merged into the convolutions.
        False reproduces zennit's default composites, where positive biases absorb relevance.
    dead_units : {"flat", "drop"}
        ``"drop"`` is zennit's z+: ``R / (z+ + eps)``, so a unit with ``z+ == 0`` (active
        through its bias alone, e.g. a depthwise 3x3 window of zeros) loses its relevance; on
        the real MobileNetV2 bird model this drops 98 % of it by the lowest layers.
        ``"flat"`` (default) divides by ``z+`` exactly where ``z+ > 0`` (safe: z+ is a sum of
        non-negative terms, each share <= 1) and spreads a dead unit's relevance uniformly over
        its receptive field, so conservation holds on every model.
    layer_map : mapping of str to RuleSpec, optional
        Rules by layer kind (``conv``, ``linear``, ``norm``), each with its parameters, e.g.
        ``{"conv": Gamma(gamma=0.25)}``; kinds not given come from the preset.
    first_layer_map : mapping of str to RuleSpec, optional
        Rules of the conv/dense layers that read the model input (``conv``, ``linear``); replaces
        the preset's (``{}``: none, those layers get the layer map's rules).
    extra_rules : iterable of (key, factory or RuleSpec)
        Rules for module classes, functions or method names, as :meth:`with_rule` adds them.
    added_rules : iterable of (str, RuleSpec)
        The added rules by key name only (:meth:`from_dict`; such a composite cannot build its
        rule table). ``rule_names`` (pairs of names) is its deprecated form.

    Attributes
    ----------
    layer_map, first_layer_map : tuple of (str, RuleSpec)
        The maps, in :data:`LAYER_KINDS` order.
    added_rules : tuple of (str, RuleSpec)
        ``module.qualname`` of each added rule's key and its specification (a plain factory is a
        :class:`~conceptree.attribution.specs.Custom` rule named by its ``module.qualname``).
        Composites compare by these, parameters included, so an explanation or index made with a
        custom rule does not pass for one made without it, nor with other parameters. Give
        factories distinct ``def`` names: two lambdas of one function share a name.
    extra_rules : tuple of (key, RuleSpec)
        The added rules with their keys (not restored by :meth:`from_dict`).
    """

    name: str
    layer_map: SpecPairs
    first_layer_map: SpecPairs
    zero_bias: bool
    dead_units: Literal["flat", "drop"]
    added_rules: SpecPairs
    extra_rules: tuple[tuple[object, RuleSpec], ...] = field(compare=False, repr=False)

    def __init__(self, name: CompositeName | str = "epsilon-plus-flat", *, epsilon: float | None = None,
                 stabilizer: float | None = None, zero_bias: bool = True, dead_units: Literal["flat", "drop"] = "flat",
                 layer_map: Mapping[str, RuleSpec] | Iterable[tuple[str, RuleSpec]] | None = None,
                 first_layer_map: Mapping[str, RuleSpec] | Iterable[tuple[str, RuleSpec]] | None = None,
                 extra_rules: Iterable[tuple[object, Callable | RuleSpec]] = (),
                 added_rules: Iterable[tuple[str, RuleSpec]] = (),
                 rule_names: Iterable[tuple[str, str]] = ()) -> None:
        if name not in PRESETS:
            raise InputError(f"unknown composite {name!r}; use one of {', '.join(COMPOSITE_NAMES)}")
        if dead_units not in ("flat", "drop"):
            raise InputError(f"dead_units must be 'flat' or 'drop', got {dead_units!r}")
        preset = PRESETS[name]
        seeds = {"epsilon": epsilon, "stabilizer": stabilizer}
        layers = dict(preset.layer_map)
        layers.update(_spec_map(layer_map, LAYER_KINDS, "layer_map"))
        first = dict(preset.first_layer_map) if first_layer_map is None else _spec_map(
            first_layer_map, FIRST_LAYER_KINDS, "first_layer_map")
        # epsilon / stabilizer, where given, set that parameter of every rule of both maps that has it (as the
        # previous release's fields did; so dataclasses.replace(composite, epsilon=...) changes the rules)
        layers = {kind: spec.with_defaults(**seeds) for kind, spec in layers.items()}
        first = {kind: spec.with_defaults(**seeds) for kind, spec in first.items()}
        if rule_names:
            warnings.warn("Composite(rule_names=...) is deprecated: pass added_rules=[(key, rule)] (specifications "
                          "or names); the keyword goes in the next release", DeprecationWarning, stacklevel=2)
            added_rules = (*added_rules, *((str(k), spec_from_dict(str(f))) for k, f in rule_names))
        extra = tuple((key, _as_spec(key, factory)) for key, factory in extra_rules)
        added = tuple((qualified_name(key), spec) for key, spec in extra) if extra else tuple(
            (str(key), spec if isinstance(spec, RuleSpec) else spec_from_dict(spec)) for key, spec in added_rules)
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "layer_map", tuple((kind, layers[kind]) for kind in LAYER_KINDS))
        set_(self, "first_layer_map", tuple((kind, first[kind]) for kind in FIRST_LAYER_KINDS if kind in first))
        set_(self, "zero_bias", bool(zero_bias))
        set_(self, "dead_units", dead_units)
        set_(self, "added_rules", added)
        set_(self, "extra_rules", extra)

    # ------------------------------------------------------------------ reading
    @property
    def flat_first_layer(self) -> bool:
        """Whether layers that read the model input have rules of their own (a first-layer map)."""
        return bool(self.first_layer_map)

    def layer_rule(self, kind: str, first: bool = False) -> RuleSpec:
        """The rule of a layer kind (``conv``, ``linear``, ``norm``); ``first``: for a layer that
        reads the model input (the first-layer map's rule where it has one)."""
        if first:
            for key, spec in self.first_layer_map:
                if key == kind:
                    return spec
        for key, spec in self.layer_map:
            if key == kind:
                return spec
        raise InputError(f"unknown layer kind {kind!r}; use one of {', '.join(LAYER_KINDS)}")

    @property
    def epsilon(self) -> float:
        """``epsilon`` of the dense layers' rule (1e-6 if it has none): the previous release's field."""
        return float(self.layer_rule("linear").params().get("epsilon", 1e-6))

    @property
    def stabilizer(self) -> float:
        """``stabilizer`` of the norm rule (1e-6 if it has none): the previous release's field."""
        return float(self.layer_rule("norm").params().get("stabilizer", 1e-6))

    @property
    def rule_names(self) -> tuple[tuple[str, str], ...]:
        """``(key, rule)`` of each added rule, the rule as one line with its parameters."""
        return tuple((key, spec.label) for key, spec in self.added_rules)

    # ------------------------------------------------------------------ changing
    def with_rule(self, key: object, factory: Callable | RuleSpec) -> Composite:
        """A copy with ``key`` (a module class, a function, or a method name) mapped to ``factory``.

        ``factory`` is a rule specification with its parameters (``Gamma(gamma=0.5)``, or a
        :func:`~conceptree.attribution.rule_table.conv_variant` of a rule class), or a plain
        ``factory(ctx)`` that receives a :class:`~conceptree.attribution.rule_table.RuleContext`
        and returns a :class:`~conceptree.attribution.rules.Rule`. Example: a custom activation
        that passes relevance::

            composite = Composite().with_rule(MyAct, lambda ctx: rules.PassRule(ctx.arg0))
        """
        return Composite(self.name, zero_bias=self.zero_bias, dead_units=self.dead_units,
                         layer_map=dict(self.layer_map), first_layer_map=dict(self.first_layer_map),
                         extra_rules=(*self.extra_rules, (key, _as_spec(key, factory))))

    def rule_table(self) -> dict:
        """The built-in rule table with this composite's added rules on top."""
        lost = [(key, spec) for key, spec in self.added_rules if isinstance(spec, Custom) and spec.target is None]
        lost += [(kind, spec) for kind, spec in (*self.layer_map, *self.first_layer_map)
                 if isinstance(spec, Custom) and spec.target is None]
        if lost or len(self.extra_rules) != len(self.added_rules):
            names = ", ".join(f"{k} -> {spec.label}" for k, spec in (lost or self.added_rules))
            raise InputError(f"this composite was read back from JSON and its added rules ({names}) cannot be "
                             "restored; pass a Composite().with_rule(...) with the same rules (composite=...)")
        # the engine's side, loaded when it asks (rule_table never imports this module)
        from . import rule_table

        return rule_table.composite_table(self.extra_rules)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, object]:
        """Plain-dict form for JSON metadata: every rule with its parameters; added rules by key
        name and rule (a custom rule without parameters by its name alone, as the previous release)."""
        return {"name": self.name, "zero_bias": self.zero_bias, "dead_units": self.dead_units,
                "layer_map": {kind: spec.to_dict() for kind, spec in self.layer_map},
                "first_layer_map": {kind: spec.to_dict() for kind, spec in self.first_layer_map},
                "extra_rules": [[key, _spec_json(spec)] for key, spec in self.added_rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Composite:
        """Inverse of :meth:`to_dict`, also of the previous release's form (``epsilon`` and
        ``stabilizer`` fields, no layer maps). Added rules come back by name and parameters only."""
        if not isinstance(data, Mapping):
            raise InputError(f"a saved composite must be a JSON object, got {type(data).__name__}")
        old = "layer_map" not in data
        unknown = sorted(set(data) - (_OLD_KEYS if old else _KEYS))
        if unknown:
            raise InputError(f"the saved composite has unknown fields {unknown}; it was written by another conceptree "
                             "release: upgrade conceptree or recompute it")
        added = tuple((str(key), spec_from_dict(rule)) for key, rule in data.get("extra_rules", []))
        common: dict[str, Any] = {"zero_bias": data.get("zero_bias", True), "dead_units": data.get("dead_units", "flat"),
                                  "added_rules": added}
        if old:
            return cls(data.get("name", "epsilon-plus-flat"), epsilon=data.get("epsilon"),
                       stabilizer=data.get("stabilizer"), **common)
        layers = {kind: spec_from_dict(spec) for kind, spec in dict(data["layer_map"]).items()}
        first = {kind: spec_from_dict(spec) for kind, spec in dict(data.get("first_layer_map", {})).items()}
        return cls(data.get("name", "epsilon-plus-flat"), layer_map=layers, first_layer_map=first, **common)


def _as_spec(key: object, factory: Callable | RuleSpec) -> RuleSpec:
    if isinstance(factory, RuleSpec):
        return factory
    if not callable(factory):
        raise InputError(f"the rule for {key!r} must be a rule specification (e.g. Gamma(gamma=0.25)) or a callable "
                         f"factory(ctx) -> Rule, got {type(factory).__name__}")
    return custom(factory)


def _spec_map(given: Mapping[str, RuleSpec] | Iterable[tuple[str, RuleSpec]] | None, kinds: tuple[str, ...],
              what: str) -> dict[str, RuleSpec]:
    """``given`` checked: known layer kinds, each with a rule specification that fits it."""
    pairs = dict(given.items() if isinstance(given, Mapping) else given or ())
    out: dict[str, RuleSpec] = {}
    for kind, spec in pairs.items():
        if kind not in kinds:
            raise InputError(f"{what} has an unknown layer kind {kind!r}; use {', '.join(kinds)}")
        spec = _as_spec(kind, spec)
        if spec.rule not in _FITS[kind]:
            raise InputError(f"{what}[{kind!r}] = {spec.label} does not apply to {kind} layers; "
                             f"use one of {', '.join(sorted(_FITS[kind]))}")
        out[kind] = spec
    return out


def _spec_json(spec: RuleSpec) -> object:
    if isinstance(spec, Custom) and not spec.parameters:
        return spec.name
    return spec.to_dict()
