"""Rules as data: YAML loader with line numbers, schema, model, checks, and the durable-rules compiler."""

from .load import RuleBook, load_rulebook

__all__ = ["RuleBook", "load_rulebook"]
