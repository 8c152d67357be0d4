"""The whole evaluation, in order: document -> valid resources -> facts -> engine -> findings -> cards.

`Evaluator` is what both front doors (CLI and HTTP service) use. Build one per process.
"""

from __future__ import annotations

import gc
import operator
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson

from .cards import cards_for
from .engine import Engine
from .facts import FactBuilder, Inputs, is_current, lab_membership, observation_date
from .fhir.datatypes import codeable as _codeable
from . import order as planned
from .findings import Finding, collect
from .fhir.read import Document, read_object
from .fhir.refs import ref_key
from .fhir.validate import validate_resources
from .fhir.patient import describe, patient_problems
from .errors import InputError
from .ruleset import RuleBook, load_rulebook
from .engine import Match
from .ruleset.compile import compile_rules, engine_view, prefilter
from .terminology import Memo

# Resource types the facts stage reads; anything else in a record is ignored (not validated).
READ_TYPES = frozenset({
    "Patient", "MedicationRequest", "MedicationStatement", "MedicationAdministration", "Medication", "Substance",
    "Condition", "AllergyIntolerance", "Observation", "Procedure", "ServiceRequest", "Appointment",
})

_date_of_pair = operator.itemgetter(0)  # (a C key function: a lambda was a tenth of ranking the results)

# Longest JSON (bytes) of a record's part kept as a memo key; longer ones are read each time.
_MEMO_KEY_MAX = 2048


# Young-generation threshold of the garbage collector in a long-running process (CPython's default is
# 700 allocations). An evaluation of the 100-resource benchmark request allocates a few thousand
# containers (the parsed JSON, facts, cards) and leaves ~340 objects in reference cycles (durable-rules'
# Python closures), so at 700 it ran ~0.9 young and 0.08 middle collections per call, each rescanning the
# call's live JSON: ~0.08 ms of a 1.9 ms evaluation (gc disabled: 1.84, 7000: 1.85, default: 1.93 ms,
# interleaved). Cycles are still collected, after ~10x more allocations: resident memory stays flat over
# 10,000 evaluations (benchmarks/evaluate.py).
YOUNG_GENERATION_THRESHOLD = 7000


def freeze_startup_objects() -> None:
    """Move everything alive now (rules, value set indexes, compiled templates) out of the garbage
    collector's view, and collect the young generation less often (YOUNG_GENERATION_THRESHOLD). Call
    once after loading, in a long-running process: full collections then stop rescanning tens of
    thousands of start-up objects during evaluations (~10 % per call)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])


@dataclass
class Evaluation:
    """The result of one evaluation."""

    response: dict
    findings: list[Finding]
    facts: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cards(self) -> list[dict]:
        return self.response["cards"]

    @property
    def rule_ids(self) -> list[str]:
        return [c["source"]["topic"]["code"] for c in self.cards]


class Evaluator:
    """Rules compiled once; evaluates documents, CDS Hooks requests or resource lists."""

    def __init__(self, book: RuleBook, fhir_version: str = "R4"):
        if fhir_version not in ("R4", "R5"):
            raise ValueError(f"unknown FHIR version {fhir_version!r} (use R4 or R5)")
        self.book = book
        self.fhir_version = fhir_version
        self.engine = Engine(compile_rules(book.rules, book.terminology), engine_view(book.rules, book.terminology))
        shared = prefilter(book.rules).shared  # per fact type, the constraints all its patterns share
        # When every observation pattern asks for the newest result of a value set, the facts stage
        # need not build facts for older results (they could never match).
        self._latest_only = shared.get("observation", {}).get("latest_in") == "non-empty"
        # Likewise, records of a type every pattern of which needs a value set are not built into facts
        # when no value set knows them (a hypertension problem, an ACE inhibitor): counted, not built.
        self._need_vs = frozenset(t for t, need in shared.items() if need.get("vs") == "non-empty")
        # JSON of an Observation's code and components -> its value sets
        self._lab_sets_memo = Memo(lambda key: self._lab_sets_of(*orjson.loads(key)))

    @classmethod
    def load(cls, rules_dir: Path | str | None = None, fhir_version: str = "R4") -> "Evaluator":
        """Load, check and compile a rules directory (default: the repository's rules/)."""
        return cls(load_rulebook(Path(rules_dir) if rules_dir else None), fhir_version)

    @property
    def rules(self):
        return self.book.rules

    def _builder(self, now: datetime | None, all_facts: bool = False) -> FactBuilder:
        return FactBuilder(self.book.terminology, self.book.records, now, latest_observations_only=self._latest_only,
                           need_vs=frozenset() if all_facts else self._need_vs)

    def warm_up(self) -> Evaluation:
        """One evaluation of a synthesized TPI order, so that the first real call does not pay for lazy
        imports and caches (the order's code comes from the value sets, like the CLI's)."""
        drafts = planned.synthesize([], ["trapezius"], "Patient/warm-up", self.book.terminology, self.book.records,
                                    self.fhir_version)
        return self.evaluate_resources([{"resourceType": "Patient", "id": "warm-up", "birthDate": "1970-01-01"}],
                                       draft_orders=drafts)

    def is_tpi(self, resource: dict) -> bool:
        """True when this resource is a trigger point injection order (ServiceRequest with a TPI code)."""
        return planned.is_tpi(resource, self.book.terminology, self.book.records)

    def is_tpi_order(self, resources: list[dict]) -> bool:
        """True when any of these resources is a trigger point injection order (draft ServiceRequest)."""
        return planned.is_tpi_order(resources, self.book.terminology, self.book.records)

    def may_be_tpi_order(self, resources: list[dict]) -> bool:
        """True for a TPI order; for a procedure order not recognised as one that has a local anesthetic
        or steroid ordered with it (order.unrecognised_injection_orders); for an injectate ordered alone
        whose reason or notes say it is for a TPI (order.injectates_for_tpi); and for an injectate basedOn
        an order that is not in the request (order.injectates_of_absent_orders). The service evaluates
        them all, so the last three are answered (named in missing-data, dose checked) instead of silence."""
        term, policy = self.book.terminology, self.book.records
        return (self.is_tpi_order(resources)
                or bool(planned.unrecognised_injection_orders(resources, term, policy))
                or bool(planned.injectates_for_tpi(resources, term, policy))
                or bool(planned.injectates_of_absent_orders(resources, term, policy)))

    def _lab_sets(self, r: dict) -> frozenset:
        """The value sets an Observation's codes are in (a lab with a local code only also by the words of
        its code: facts.lab_membership, as the facts stage reads it), and those of its components' codes: a
        panel's component (the INR of a PT/INR panel) is a result of its own (facts), so the panel is read,
        validated and ranked by its date in those value sets too.

        Memoised by the JSON of the code and components: every result of one test carries the same code
        (52 results, 4 tests in the benchmark request); reading it again was 1.5 us a result, the JSON
        and a look-up 0.4 us (measured). A code that cannot be written as JSON (a lone surrogate from a
        Python caller) or is long (it would stay in memory) is read each time; a Python value JSON does not
        have (a tuple, NaN) is read as the JSON orjson writes for it (an array, null)."""
        code, components = r.get("code"), r.get("component")
        try:
            key = orjson.dumps((code, components or None))  # (no components, [] or null: read alike)
        except TypeError:
            key = None
        if key is None or len(key) > _MEMO_KEY_MAX:
            return self._lab_sets_of(code, components)
        return self._lab_sets_memo[key]

    def _lab_sets_of(self, code, components) -> frozenset:
        term, policy = self.book.terminology, self.book.records
        sets = lab_membership(term, policy, *_codeable(code))[0]
        if components and isinstance(components, list):  # most results have none: no extra work for them
            for c in components:
                if isinstance(c, dict):
                    sets = sets | lab_membership(term, policy, *_codeable(c.get("code")))[0]
        return sets

    def _accept_all(self, located: list, skipped: list[str], gaps: list, unread: dict | None = None,
                    now: datetime | None = None) -> list:
        """The located resources the facts stage reads and that are valid FHIR; the others are
        named in `skipped` and, as gaps, in the missing-data card. Observations no value set knows are
        not read (nor validated)."""
        candidates, labs = [], []
        for loc in located:
            r = loc.resource
            rt = r.get("resourceType") if isinstance(r, dict) else None
            if not isinstance(rt, str):
                skipped.append(f"{loc.location}: not a FHIR resource")
                gaps.append((loc.location, f"a record at {loc.location} that is not a FHIR resource"))
            elif rt == "Observation":
                sets = self._lab_sets(r)
                if sets:
                    labs.append((loc, sets))
            elif rt in READ_TYPES:
                candidates.append(loc)
        if not (self._latest_only and unread is not None):
            candidates += [loc for loc, _ in labs]
            labs = []
        accepted = [loc for loc, issues in zip(candidates, validate_resources([loc.resource for loc in candidates], self.fhir_version))
                    if self._valid(loc, issues, skipped, gaps)]
        if labs:
            chosen = self._newest_valid(labs, skipped, gaps, (now or datetime.now(timezone.utc)).date())
            unread["Observation"] = unread.get("Observation", 0) + len(labs) - len(chosen)
            accepted += chosen
        return accepted

    def _valid(self, loc, issues, skipped: list[str], gaps: list) -> bool:
        if not issues:
            return True
        r = loc.resource
        name = ref_key(r) or r.get("resourceType")
        skipped.append(f"{loc.location} {name}: {issues[0]}" + (f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""))
        gaps.append((name, f"{name} (at {loc.location}) was skipped: invalid FHIR {self.fhir_version}, {issues[0]}"))
        return False

    def _newest_valid(self, labs: list, skipped: list[str], gaps: list, today) -> list:
        """Of the observations (with their value sets), the ones a rule can read: per value set, the
        newest current result that is valid FHIR (all of them on a tie). Only those are validated
        (validation is most of the cost of a new patient's first evaluation); an invalid newer result is
        named and the next one is taken, as if it had not been sent. Older results are not read at all."""
        policy = self.book.records.for_type("Observation")
        by_vs: dict[str, list] = {}
        for loc, sets in labs:
            r = loc.resource
            when = observation_date(r)
            if when is None or not is_current(r, policy, today):
                continue  # never the latest: the facts stage would not read it
            for v in sets:
                by_vs.setdefault(v, []).append((when, loc))
        for ranked in by_vs.values():
            ranked.sort(key=_date_of_pair, reverse=True)
        verdict: dict[int, bool] = {}

        def newest(ranked):
            """The newest results of one value set, validating from the top until one is valid."""
            top = None
            for when, loc in ranked:
                if top is not None and when < top:
                    break
                if id(loc) not in verdict:
                    verdict[id(loc)] = self._valid(loc, validate_resources([loc.resource], self.fhir_version)[0], skipped, gaps)
                if verdict[id(loc)]:
                    top = when
                    yield loc

        # the usual case first: the newest of every value set, validated as one list (one cache look-up)
        tops = {}
        for ranked in by_vs.values():
            for when, loc in ranked:
                if when != ranked[0][0]:
                    break  # (ranked: not all of them; the comprehension over every result was 8 % of this)
                tops[id(loc)] = loc
        first = list(tops.values())
        for loc, issues in zip(first, validate_resources([loc.resource for loc in first], self.fhir_version)):
            verdict[id(loc)] = self._valid(loc, issues, skipped, gaps)
        chosen = {id(loc) for ranked in by_vs.values() for loc in newest(ranked)}
        return [loc for loc, _ in labs if id(loc) in chosen]

    def evaluate_document(self, doc: Document, *, gaps=(), checked=(), now: datetime | None = None,
                          all_facts: bool = False) -> Evaluation:
        """Evaluate one read document (bundle, resource, NDJSON or CDS Hooks request).

        all_facts: build a fact of every record read, also those no rule could match (for `explain`,
        which shows the nearest candidates of a rule that did not fire); the cards are the same."""
        started = time.perf_counter()
        doc = doc.with_drafts(self.is_tpi, self.book.records)
        skipped: list[str] = []
        gap_list: list[tuple[str, str]] = [("", g) for g in gaps] + [("", n) for n in doc.notes]
        inputs = Inputs(record=[], drafts=[], gaps=gap_list, checked=set(doc.checked) | set(checked))
        record = self._accept_all(doc.resources, skipped, gap_list, inputs.unread, now)
        drafts = self._accept_all(doc.draft_orders, skipped, gap_list)
        # One patient: the valid records that will be read (invalid ones are skipped and named anyway).
        context = doc.request.get("context") if doc.request else None
        pid = context.get("patientId") if isinstance(context, dict) and isinstance(context.get("patientId"), str) else None
        _, problems = patient_problems(record + drafts, pid)
        if problems:
            raise InputError(describe(problems), doc.name)
        inputs.record += [loc.resource for loc in record]
        inputs.drafts += [loc.resource for loc in drafts]
        for loc in record + drafts:
            if loc.full_url:
                inputs.full_urls.setdefault(loc.full_url, loc.resource)
        builder = self._builder(now, all_facts)
        facts = builder.build(inputs)
        matches = self._match(facts)
        findings = collect(matches, self.book.rules)
        drafts = {ref_key(r): r for r in inputs.drafts if ref_key(r)}
        patient = next((f for f in facts if f["t"] == "patient"), None)
        cards = cards_for(findings, drafts, patient)
        return Evaluation({"cards": cards}, findings, facts, skipped, time.perf_counter() - started)

    def _match(self, facts: list[dict]) -> list[Match]:
        """The engine's firings on these facts: it is sent of each only what rules read, and nothing of
        those no rule could match (compile.engine_view); bindings are the facts given."""
        return self.engine.run(facts)

    def evaluate_request(self, request: dict, *, gaps=(), checked=(), now: datetime | None = None) -> Evaluation:
        """Evaluate a CDS Hooks request whose prefetch holds the data (missing keys already fetched).

        `checked`: record lists (medications, allergies, conditions, procedures, observations) the
        caller knows were looked up even if empty; prefetch keys that are null or a searchset are
        recognised by themselves."""
        return self.evaluate_document(read_object(request, "request"), gaps=gaps, checked=checked, now=now)

    def evaluate_resources(self, resources: list[dict], *, draft_orders: list[dict] | None = None,
                           gaps=(), now: datetime | None = None) -> Evaluation:
        """Evaluate a list of resources (and draft orders, if any)."""
        doc = read_object(resources, "resources")
        if draft_orders is not None:
            doc.draft_orders = read_object(draft_orders, "draftOrders").resources
        return self.evaluate_document(doc, gaps=gaps, now=now)
