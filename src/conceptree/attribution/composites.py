"""LRP composites: which rule applies to which layer.

The rules follow zennit's definitions exactly (see ``tests/test_zennit_agreement.py``):

* ``epsilon`` (dense layers): ``R_in = x * W^T (R / stab_eps(z))`` with ``z = W x + b``.
* ``z+`` (convolutions): ``R_in = x+ * W+^T s + x- * W-^T s``, ``s = R / stab(z+)``,
  ``z+ = W+ x+ + b+ + W- x-``.
* ``flat`` (the first layer): ``R_in = 1^T (R / stab(1 * 1))``, weights and inputs set to one.
* ``norm`` (residual sums, stacked sums, average pooling): ``R_i = x_i * R / stab(sum)``.
* ``pass`` (elementwise activations, identity, dropout), gradient routing (max pooling),
  index bookkeeping (reshape, concatenation, padding, slicing).

``stab(z) = z + eps * sign(z)`` with ``sign(0) = +1``, as in ``zennit.core.stabilize``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from ..errors import InputError

CompositeName = Literal["epsilon-plus-flat", "epsilon-plus"]
COMPOSITE_NAMES: tuple[str, ...] = ("epsilon-plus-flat", "epsilon-plus")


@dataclass(frozen=True)
class Composite:
    """Configuration of the LRP rules.

    Parameters
    ----------
    name : {"epsilon-plus-flat", "epsilon-plus"}
        ``epsilon-plus-flat`` (default): epsilon for dense layers, z+ for convolutions, flat
        for every conv/dense layer that reads the model input. ``epsilon-plus``: the same
        without the flat first layer (z+ there too).
    epsilon : float
        Stabiliser of the epsilon rule (zennit's ``epsilon``), default 1e-6.
    stabilizer : float
        Stabiliser of the z+, flat and norm rules (zennit's ``stabilizer``), default 1e-6.
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
    extra_rules : tuple of (key, factory)
        Rules added with :meth:`with_rule` (they take precedence over the built-in table,
        :mod:`conceptree.attribution.rule_table`).
    rule_names : tuple of (str, str)
        ``module.qualname`` of each added rule's key and factory, derived from ``extra_rules``
        (or read back by :meth:`from_dict`, where the callables cannot be restored). Composites
        compare by these names, so an explanation or index made with a custom rule does not
        pass for one made without it. Give factories distinct ``def`` names: two lambdas of one
        function share a name.
    """

    name: CompositeName = "epsilon-plus-flat"
    epsilon: float = 1e-6
    stabilizer: float = 1e-6
    zero_bias: bool = True
    dead_units: Literal["flat", "drop"] = "flat"
    extra_rules: tuple[tuple[object, Callable], ...] = field(default=(), compare=False)
    rule_names: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.extra_rules:
            object.__setattr__(self, "rule_names", tuple((_name(k), _name(f)) for k, f in self.extra_rules))
        else:
            object.__setattr__(self, "rule_names", tuple(tuple(pair) for pair in self.rule_names))
        if self.dead_units not in ("flat", "drop"):
            raise InputError(f"dead_units must be 'flat' or 'drop', got {self.dead_units!r}")
        if self.name not in COMPOSITE_NAMES:
            raise InputError(
                f"unknown composite {self.name!r}; use one of {', '.join(COMPOSITE_NAMES)}"
            )

    @property
    def flat_first_layer(self) -> bool:
        """Whether layers that read the model input use the flat rule."""
        return self.name == "epsilon-plus-flat"

    def with_rule(self, key: object, factory: Callable) -> Composite:
        """A copy with ``key`` (a module class, a function, or a method name) mapped to ``factory``.

        ``factory(ctx)`` receives a :class:`~conceptree.attribution.rule_table.RuleContext` and
        returns a :class:`~conceptree.attribution.rules.Rule`. Example: a custom activation
        that passes relevance::

            composite = Composite().with_rule(MyAct, lambda ctx: rules.PassRule(ctx.arg0))
        """
        if not callable(factory):
            raise InputError(f"the rule for {key!r} must be a callable factory(ctx) -> Rule, got {type(factory).__name__}")
        return replace(self, extra_rules=(*self.extra_rules, (key, factory)))

    def rule_table(self) -> dict:
        """The built-in rule table with this composite's added rules on top."""
        from .rule_table import default_rules

        if self.rule_names and not self.extra_rules:
            names = ", ".join(f"{k} -> {f}" for k, f in self.rule_names)
            raise InputError(f"this composite was read back from JSON and its added rules ({names}) cannot be "
                             "restored; pass a Composite().with_rule(...) with the same rules (composite=...)")
        table = default_rules()
        table.update({cast(Any, key): factory for key, factory in self.extra_rules})
        return table

    def to_dict(self) -> dict[str, object]:
        """Plain-dict form for JSON metadata (constructor arguments; added rules by name)."""
        return {"name": self.name, "epsilon": self.epsilon, "stabilizer": self.stabilizer,
                "zero_bias": self.zero_bias, "dead_units": self.dead_units,
                "extra_rules": [list(pair) for pair in self.rule_names]}

    @classmethod
    def from_dict(cls, data: dict) -> Composite:
        """Inverse of :meth:`to_dict`: the added rules come back by name only (see ``rule_names``)."""
        values = dict(data)
        names = values.pop("extra_rules", [])
        return cls(**values, rule_names=tuple(tuple(pair) for pair in names))


def _name(obj: object) -> str:
    """``module.qualname`` of a rule key or factory (a method-name key is its own name)."""
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
