"""The only module that knows durable-rules.

One Host per process, every call under one lock (durable-rules is not thread-safe), a fresh
session id per evaluation whose state is deleted in `finally` (live sessions leak ~224 KiB each
and the engine dies after 1,024 of them). durable runs no Python action of ours: `Engine._assert`
asserts the facts and takes each firing from durable's C engine itself (see there why), so no
exception of ours can be swallowed into durable's session state.

durable's Host also starts two background threads that poll every ruleset every 0.2 s and run any
queued action (`dispatch`, `dispatch_timers`) outside our lock, swallowing their errors. During a
slow evaluation (megabytes of facts) that thread took actions of the running session: a finding
went missing from the answer, nondeterministically, with only "error code: 307" in the log. We
take every firing synchronously after assert_facts and use no timers, so `_Host` starts no
threads. See tests/test_engine.py and tests/test_fuzz.py.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import orjson
from durable import engine as _durable

from .errors import EngineError

RULESET = "tpi"
_SINK = "__sink__"  # every fact matches its first pattern, so assert_facts never rejects a fact
# Every batch carries one session marker fact that a rule always fires on. durable-rules crashes
# the process (segfault / "free(): invalid pointer") in delete_state or get_state for a session in
# which no action ran; with the marker an action always runs. See tests/test_engine.py.
_SESSION = "__session__"
_CREATE_ATTEMPTS = 5


class _OrjsonForDurable:
    """durable-rules writes the ruleset with the stdlib `json` (its module global `json`), and
    Engine._assert writes each fact batch and reads each firing with that same global (so that a
    test can give durable its stdlib json back: tests/test_oracle.py). orjson writes and reads the
    same JSON (UTF-8, as durable's ensure_ascii=False) several times faster; our facts hold only
    str keys, strings, numbers, booleans and lists. NaN, which orjson writes as null, never occurs
    in a fact (facts.py builds numbers from parsed FHIR decimals)."""

    @staticmethod
    def dumps(obj, **_options) -> str:
        return orjson.dumps(obj).decode()

    loads = staticmethod(orjson.loads)
    JSONDecodeError = orjson.JSONDecodeError


_durable.json = _OrjsonForDurable


def _never_run(c):
    """The action durable wants for each rule; it never runs: Engine._assert takes the firings."""


class _Host(_durable.Host):
    """A durable Host without its background dispatch and timer threads (see the module docstring)."""

    def _run(self):
        pass


@dataclass(frozen=True)
class Match:
    """One firing: the durable rule name and the facts bound to each pattern name."""

    rule: str
    bindings: dict


def _as_is(fact: dict) -> dict:
    """The default view: the whole fact but its fid (which the engine adds to each fact it sends)."""
    return {k: v for k, v in fact.items() if k != "fid"}


def _alike(shown: list[tuple[dict, dict]]) -> list[tuple[dict, list[dict]]]:
    """(view, fact) pairs in groups of the same view (four records of one warfarin prescription), each
    as (that view, its facts), in the order each group first occurs. The same view: the same JSON,
    keys in the same order (a view with its keys in another order only makes a group of its own)."""
    groups: dict[bytes, tuple[dict, list[dict]]] = {}
    for view, f in shown:
        key = orjson.dumps(view)
        if key in groups:
            groups[key][1].append(f)
        else:
            groups[key] = (view, [f])
    return list(groups.values())


def _pattern_type(pattern: dict) -> str | None:
    """The fact type a durable pattern requires ({"t": X} alone or in its $and); None: any type."""
    for term in [pattern] + pattern.get("$and", []):
        if isinstance(term.get("t"), str):
            return term["t"]
    return None


def _copies_needed(definitions: dict[str, dict]) -> Counter | None:
    """Per fact type (None: a type no rule names), how many facts of a group of alike facts durable
    must see: the most patterns one rule has that such a fact could meet, since durable binds
    distinct facts to a rule's patterns (a probe of pregnancy-steroid has two observation
    patterns). None when every fact must be sent: a rule reads fid, or is not a list of patterns."""
    if b'"fid"' in orjson.dumps(definitions):
        return None
    most: Counter = Counter()
    for definition in definitions.values():
        if set(definition) != {"all"}:
            return None
        counts = Counter(_pattern_type(p) for entry in definition["all"] for p in entry.values())
        untyped = counts.pop(None, 0)
        most[None] = max(most[None], untyped)
        for t, n in counts.items():
            most[t] = max(most[t], n + untyped)
    return most


def _expand(rule: str, bound: dict[str, int], groups: list[list[dict]]) -> list[Match]:
    """The firings that one firing on these groups (pattern name -> group index) stands for: every
    combination of distinct facts, one from each group (a group bound to two patterns gives each a
    different fact, as durable does)."""
    combos = itertools.product(*(groups[i] for i in bound.values()))
    if len(set(bound.values())) < len(bound):
        combos = (c for c in combos if len({f["fid"] for f in c}) == len(c))
    return [Match(rule, dict(zip(bound, combo))) for combo in combos]


class Engine:
    """A compiled ruleset, ready to evaluate fact lists. Build one per process."""

    def __init__(self, definitions: dict[str, dict], view: Callable[[dict], dict | None] = _as_is):
        """view: what durable is sent of a fact, without its fid (a new dict; None: nothing, no rule
        could match it), e.g. ruleset.compile.engine_view; by default the whole fact."""
        self._lock = threading.Lock()
        self._sids = itertools.count(1)
        self.rule_names = tuple(definitions)
        copies = _copies_needed(definitions)
        self._grouped = copies is not None  # else every fact is sent, each a group of its own
        # How many facts of a group of alike facts durable is sent, per fact type (None: any other
        # type); a dict, as a method asked for each group cost 5 us an evaluation.
        self._sent_of = {t: max(1, n) for t, n in copies.items()} if copies is not None else {None: 1}
        self._view = view
        # durable-rules now and then refuses a valid ruleset ("Could not create ruleset, error code:
        # 102", ERR_UNEXPECTED_TYPE of its C rule compiler, rete.c; the cause is in the C code, not
        # found), about 1 in 400 engines in a loop and once in a fresh service process under CI. The
        # same JSON is accepted the next time: a fresh Host, given a fresh copy of the definitions (durable deletes each rule's "run"
        # from the dict it is given, before the C engine sees the rules), accepts them: a few
        # attempts, then the error.
        for attempt in range(_CREATE_ATTEMPTS):
            self._host = _Host()
            try:
                self._host.set_rulesets({RULESET: self._ruleset(definitions)})
                self._rules = self._host.get_ruleset(RULESET)._handle  # the C engine's ruleset
                break
            except Exception as e:  # the C engine reports bad definitions only by number
                if attempt + 1 == _CREATE_ATTEMPTS:
                    raise EngineError(f"durable-rules rejected the compiled rules: {e}") from e

    def _ruleset(self, definitions: dict[str, dict]) -> dict:
        """The durable ruleset: our rules, the sink and the session marker. durable wants an action
        for each rule (`_never_run`)."""
        ruleset = {}
        for name, definition in definitions.items():
            ruleset[name] = dict(definition, run=_never_run)  # a new dict: durable deletes its "run"
        ruleset[_SINK] = {"all": [{"m": {"$ex": {"t": 1}}}, {"n": {"t": "__no_such_fact__"}}], "run": _never_run}
        ruleset[_SESSION] = {"all": [{"m": {"t": _SESSION}}], "run": _never_run}
        return ruleset

    def run(self, facts: list[dict]) -> list[Match]:
        """Every firing for these facts, binding the facts given (not modified). Each fact has a
        distinct `fid`, which no rule reads.

        Facts alike (the same view: equal but for fid and what no rule reads) meet the same patterns,
        so durable is sent of each group only as many as one rule has patterns of their type (mostly
        one), and each firing stands for every combination of distinct facts from the groups it bound:
        the same firings, for less of durable's time, which grows with each fact sent and each firing
        (a JSON round trip). The 100-resource benchmark request (four records each of one warfarin
        prescription, one diabetes prescription and one diabetes diagnosis): 31 facts sent -> 22,
        firings 19 -> 7, and Evaluator._match 0.54 -> 0.38 ms, the warm evaluation 2.40 -> 2.12 ms
        (medians, interleaved). Sent as views (engine_view) and grouped by them, bound to the facts
        given with no copies mapped back: _match 0.38 -> 0.30 ms.
        """
        shown = [(v, f) for f in facts if (v := self._view(f)) is not None]
        groups = _alike(shown) if self._grouped else [(v, [f]) for v, f in shown]
        sid = str(next(self._sids))  # (a count's next() is atomic: no two runs share a session)
        sent, group_of, sent_of = [], {}, self._sent_of
        for i, (view, group) in enumerate(groups):
            for f in group[:sent_of.get(view["t"], sent_of[None])]:
                sent.append(dict(view, fid=f["fid"], sid=sid))
                group_of[f["fid"]] = i
        members = [group for _, group in groups]
        matches, expanded = [], set()
        for rule, fids in self._fire(sid, sent):
            bound = {name: group_of[fid] for name, fid in fids.items()}
            shape = (rule, frozenset(bound.items()))
            if shape not in expanded:  # else the same groups through other facts of them
                expanded.add(shape)
                matches += _expand(rule, bound, members)
        return matches

    def _fire(self, sid: str, batch: list[dict]) -> list[tuple[str, dict]]:
        """durable's firings for these facts of session sid (each holds it): (rule name, {pattern
        name: fid})."""
        with self._lock:
            batch = batch + [{"t": _SESSION, "sid": sid}]
            try:
                firings = self._assert(batch)
            except Exception as e:
                self._forget(sid, failing=True)
                raise EngineError(f"rules engine failed: {type(e).__name__}: {str(e)[:300]}") from e
            self._forget(sid, failing=False)
            return firings

    def _assert(self, batch: list[dict]) -> list[tuple[str, dict]]:
        """Assert the facts and take the firings one by one, as durable's Host.assert_facts does but
        without its Python action for each firing (a Closure, a Promise, two clock readings, the
        session state written back as JSON): on the benchmark request 0.25 -> 0.20 ms a call."""
        rete = _durable.durable_rules_engine
        code, session = rete.assert_facts(self._rules, _durable.json.dumps(batch))
        if code in (1, 2):  # durable's MessageNotHandled / MessageObserved (a fact given twice)
            raise EngineError(f"durable-rules refused the facts (result {code})")
        if code == 3:  # as durable's Ruleset._handle_result
            session = 0
        firings = []
        action = rete.start_action_for_state(self._rules, session)
        message = action[1] if action else None
        while message:
            name, bound = next(iter(_durable.json.loads(message).items()))  # one rule a message
            if name != _SESSION:
                firings.append((name, {key: fact["fid"] for key, fact in bound.items()}))
            # durable's Host writes the session state back here (update_state: the state fact
            # retracted and asserted again, ~1 us a firing); our actions never change it, no rule
            # reads it, and complete_and_start_action does not need it (rules events.c).
            message = rete.complete_and_start_action(self._rules, session)
        return firings

    def _forget(self, sid: str, failing: bool) -> None:
        """Delete the session's state. After a successful run the marker fact guarantees a session
        exists, so a failure is raised (a session left behind leaks toward durable's 1,024-session
        limit); after a failed run the session may not exist and the first error is the one raised."""
        try:
            self._host.delete_state(RULESET, sid)
        except Exception as e:
            if not failing:
                raise EngineError(f"rules engine could not delete session state: {type(e).__name__}") from e
