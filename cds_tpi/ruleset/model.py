"""The rule object model: what a loaded, checked rule file is."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .conditions import Condition, parse_where

SEVERITY = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Pattern:
    """One fact pattern of an alternative, named so cards can refer to what it matched."""

    name: str
    fact: str
    where: dict = field(default_factory=dict)
    absent: bool = False
    min_count: Any = None

    @cached_property
    def conditions(self) -> tuple[Condition, ...]:
        """The `where` as condition objects (see conditions.py), parsed once."""
        return parse_where(self.where)


@dataclass(frozen=True)
class Alternative:
    """One way a rule can fire: all patterns hold at once."""

    index: int
    patterns: tuple[Pattern, ...]
    indicator: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Rule:
    """A clinical rule as written in rules/<id>.yaml."""

    id: str
    title: str
    indicator: str
    alternatives: tuple[Alternative, ...]
    card: dict
    sources: tuple[dict, ...]
    params: dict = field(default_factory=dict)
    description: str = ""
    policy: str = ""
    path: str = ""

    def param(self, name: str):
        return self.params[name]

    @cached_property
    def pattern_names(self) -> tuple[str, ...]:
        """Every pattern name of every alternative, in order, each once: a note or card template sees
        them all (those that matched nothing as empty lists)."""
        return tuple(dict.fromkeys(p.name for a in self.alternatives for p in a.patterns))

    @cached_property
    def card_parts(self):
        """What every card of this rule says alike (cards.CardParts), worked out on first use."""
        from ..cards import CardParts  # (the cards stage reads this model: imported here, not above)
        return CardParts.of(self)
