"""`--injectate` names checked against the injectate value sets of the rules (rules/records.yaml
`injectate_valuesets`): a name the rules cannot classify would leave the anesthetic, steroid and
dose checks silently undone, so it is a usage error naming the known agents and close spellings.
The known agents are the value sets' text patterns and concept displays: no drug name lives here."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class InjectateVocabulary:
    """The agents the rules recognise in an injectate, by value set title."""

    valuesets: tuple[str, ...]              # value set ids (records.yaml injectate_valuesets)
    agents: dict[str, tuple[str, ...]]      # value set title -> its text patterns (the agents' names), sorted
    displays: tuple[str, ...] = ()          # displays of the sets' coded concepts (products), for spellings

    def all_names(self) -> list[str]:
        return sorted({n for names in self.agents.values() for n in names} | set(self.displays))


def vocabulary(book) -> InjectateVocabulary:
    """Names of the injectate value sets: text patterns (expanded through includes), listed to the
    user, and the displays of their coded concepts, used for close spellings only."""
    term, policy = book.terminology, book.records
    ids = tuple(policy.injectate_valuesets) if policy is not None else ()
    agents: dict[str, tuple[str, ...]] = {}
    displays: set[str] = set()
    for vid in ids:
        codes, texts = term.expanded.get(vid, (set(), []))
        agents[term.defs[vid].title if vid in term.defs else vid] = tuple(sorted({t.strip().lower() for t in texts
                                                                                  if t.strip()}))
        for d in term.defs.values():
            for system, code, display in getattr(d, "displays", ()):
                if (system, code) in codes and display:
                    displays.add(display.strip().lower())
    return InjectateVocabulary(ids, agents, tuple(sorted(displays)))


def is_known(name: str, book, vocab: InjectateVocabulary) -> bool:
    """Whether the rules classify this medication name into an injectate value set, as they
    would classify the synthesized MedicationRequest (by text, or by a concept's display)."""
    membership = book.terminology.match([], [name])
    if set(membership.all) & set(vocab.valuesets):
        return True
    concept = book.terminology.find_concept(name)
    if concept is not None:
        return bool(set(book.terminology.match([(concept[0], concept[1])], []).all) & set(vocab.valuesets))
    return False


def _suggestions(name: str, book, vocab: InjectateVocabulary, n: int = 3) -> list[str]:
    """Close spellings of `name`, one per agent: the value sets also hold misspellings seen in records
    ("lidocain", "lidocane") so that an allergy written so is read; a suggestion names the agent as
    product names spell it (a word of a concept's display) when one of its spellings is close."""
    candidates = difflib.get_close_matches(name.strip().lower(), vocab.all_names(), n=12, cutoff=0.6)
    display_words = {w for d in vocab.displays for w in d.replace("/", " ").split()}
    by_agent: dict[frozenset, list[str]] = {}
    for c in candidates:
        by_agent.setdefault(frozenset(book.terminology.match([], [c]).all), []).append(c)
    out = []
    for spellings in by_agent.values():
        out.append(next((c for c in spellings if c in display_words), spellings[0]))
    return out[:n]


def check_injectates(names: list[str], book) -> None:
    """Raise a click.UsageError (exit 2) for the first name no injectate value set knows."""
    vocab = vocabulary(book)
    for name in names:
        if is_known(name, book, vocab):
            continue
        close = _suggestions(name, book, vocab)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        known = "; ".join(f"{title}: {', '.join(names_)}" for title, names_ in vocab.agents.items())
        raise click.UsageError(
            f"--injectate: '{name}' is not a medication the rules know, so the anesthetic, steroid and dose "
            f"checks could not classify it.{hint} Known agents ({', '.join(vocab.valuesets)} value sets) - {known}.")
