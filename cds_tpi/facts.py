"""Resources -> plain facts the rules match (types and fields in ruleset/facttypes.py).

Generic FHIR reading only: which records count as current comes from rules/records.yaml,
what a code means comes from rules/valuesets, the planned order's doses from order.py. No drug
names, codes or thresholds live here.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from . import order as planned
from .fhir.datatypes import codeable as _codeable, coding_code as _coding_code, display as _display, parse_date, printable as _printable
from .fhir.refs import ResourceIndex, ref_key
from .fhir.text import bounded_text
from .ruleset.records import RecordPolicy, ResourcePolicy
from .terminology import CLAUSES, Terminology, canonical_coding, compile_cues

# A result written as text: an optional comparator, a number, an optional unit ("<10", ">8.0", "45 K/uL").
_NUMBER = re.compile(r"^(<=|>=|<|>|≤|≥)?\s*(\d+(?:\.\d+)?|\.\d+)\s*(\S.*)?$")
_COMPARATORS = {"≤": "<=", "≥": ">="}


@dataclass
class Inputs:
    """What one evaluation is about, as resources (already validated) by role."""

    record: list[dict]                     # the patient's record
    drafts: list[dict] = field(default_factory=list)  # the planned order (see Document.with_drafts)
    gaps: list[tuple[str, str]] = field(default_factory=list)   # (ref or location, what could not be read)
    checked: set[str] = field(default_factory=set)               # record lists looked up, even if empty
    full_urls: dict[str, dict] = field(default_factory=dict)    # Bundle entry fullUrl -> its resource
    unread: dict[str, int] = field(default_factory=dict)         # records given but not passed on (e.g. older labs), by type


# The inventory count each record type adds to.
COUNTED_AS = {"MedicationRequest": "medications", "MedicationStatement": "medications", "Condition": "conditions",
              "AllergyIntolerance": "allergies", "Observation": "observations", "Procedure": "procedures", "Patient": "patient"}

_ABATEMENT = ("abatementDateTime", "abatementPeriod", "abatementAge", "abatementRange", "abatementString", "abatementBoolean")


def is_current(r: dict, p: ResourcePolicy, today: date) -> bool:
    """Does this record count, per its resource type's policy in rules/records.yaml? Pure, and tolerant of
    JSON not validated yet (the pipeline asks it before validating observations)."""
    if p.status is not None:
        status = r.get("status")
        if not isinstance(status, str) or status not in p.status:
            return False
    if p.exclude_intent and _text(r.get("intent")) in p.exclude_intent:
        reported = r.get("reportedBoolean") is True or isinstance(r.get("reportedReference"), dict)
        if not ((p.reported_counts and reported) or (p.reported_categories and set(_categories(r, every=True)) & p.reported_categories)):
            return False
    if p.clinical_status is not None:
        cs = _coding_code(r.get("clinicalStatus"))
        if cs is None:
            if not p.missing_clinical_status_counts:
                return False
        elif cs not in p.clinical_status:
            return False
    if p.exclude_verification and _coding_code(r.get("verificationStatus")) in p.exclude_verification:
        return False
    if p.exclude_abated and not r.keys().isdisjoint(_ABATEMENT):
        for key in _ABATEMENT:
            if key in r:
                if key == "abatementBoolean" and r[key] is False:
                    continue
                when = parse_date(r[key]) if key == "abatementDateTime" else parse_date((r[key] or {}).get("end") if isinstance(r[key], dict) else None)
                if when is None or when <= today:
                    return False
    if p.exclude_ended_period:
        period = r.get("effectivePeriod")
        end = parse_date(period.get("end")) if isinstance(period, dict) else None
        if end is not None and end < today:
            return False
    return True


def lab_membership(term: Terminology, policy: RecordPolicy, codes: list, texts: list[str]) -> tuple[frozenset, frozenset]:
    """(value sets, text-only value sets) of an Observation's or a component's code. By its codes; and, for a
    lab sent with a local code only (none of its codings in a system of records.yaml observation_text_match
    unless_coded_in: a LOINC-coded result is identified by its code alone), by the words of its code
    (code.text and the codings' displays: "PLATELET COUNT", "PT-INR") against the text patterns of the
    observation_text_match value sets only. Both look-ups are memoised by the terminology."""
    by_code = term.match(codes, []).by_code
    allowed = policy.observation_text_valuesets
    if not allowed or not texts:
        return by_code, frozenset()
    for s_, c_ in codes:  # a loop, not any(<generator>): this runs for every Observation sent (~56 in the benchmark)
        if canonical_coding(s_, c_)[0] in policy.observation_text_unless:
            return by_code, frozenset()
    by_text = (term.match([], texts).by_text & allowed) - by_code
    return by_code | by_text, by_text


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def gap_parts(text: str) -> tuple[str, str]:
    """A gap's text as (head, why): the head, for the missing-data summary, is the text up to its
    first ':' ("prefetch 'observations'", "Observation/o1 (at entry[3]) was skipped"), at most 80
    characters; `why` is the rest ("invalid FHIR R4, ..."), or "unreadable" when the text has no ':'
    (the card names each gap once, not its head twice)."""
    head, _, rest = text.partition(":")
    head, rest = head.strip(), rest.strip()
    if len(head) > 80:  # cut at a word, not inside one ("was skip…")
        cut = head[:79]
        head = (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;(") + "…"
    return head, rest or "unreadable"


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else None


def observation_date(r: dict) -> date | None:
    """When an Observation was made (effective[x], else issued); tolerant of unvalidated JSON."""
    period = r.get("effectivePeriod")
    return parse_date(r.get("effectiveDateTime") or _get(period, "end") or _get(period, "start")
                      or r.get("effectiveInstant") or r.get("issued"))


def _condition_date(r: dict) -> date | None:
    """A Condition's latest date of onsetDateTime, onsetPeriod start and end, and recordedDate. (A loop
    over the values given: a list of the parsed dates and max() took twice as long, 1.1 us.)"""
    period = r.get("onsetPeriod")
    latest = None
    for value in (r.get("onsetDateTime"), _get(period, "start"), _get(period, "end"), r.get("recordedDate")):
        d = parse_date(value) if value else None
        if d is not None and (latest is None or d > latest):
            latest = d
    return latest


def _newer_than(items: list[tuple[int, list[str]]]):
    """For (age in days, value sets) items: a function giving, for an age, the sorted value sets of the
    items younger than it (a smaller age; the same day is not younger). Prefix unions over the distinct
    ages, so each look-up is a binary search, not a pass over every item (a record of hundreds of
    conditions asked this for each of them)."""
    by_age: dict[int, set[str]] = {}
    for age, vs in items:
        by_age.setdefault(age, set()).update(vs)
    ages = sorted(by_age)
    prefix, acc = [[]], set()
    for age in ages:
        acc |= by_age[age]
        prefix.append(sorted(acc))
    return lambda days: list(prefix[bisect.bisect_left(ages, days)])


def _procedure_date(r: dict) -> date | None:
    """When a Procedure was done (R4 performed[x], R5 occurrence[x]; a period's start)."""
    return parse_date(r.get("performedDateTime") or _get(r.get("performedPeriod"), "start")
                      or r.get("occurrenceDateTime") or _get(r.get("occurrencePeriod"), "start"))


def _categories(r: dict, every: bool = False) -> list[str]:
    """The codes of a record's category (a list, or one CodeableConcept as R4 MedicationStatement has it):
    the first code of each category, or with `every` the code of every coding; tolerant of unvalidated JSON."""
    out = []
    cats = r.get("category")
    for cc in cats if isinstance(cats, list) else [cats]:
        codings = cc.get("coding") if isinstance(cc, dict) else None
        codes = [str(c["code"]) for c in codings if isinstance(c, dict) and c.get("code")] if isinstance(codings, list) else []
        out += codes if every else codes[:1]
    return out


def condition_record(r: dict, onset: date | None) -> str:
    """What kind of record a Condition is, in words for a card: "problem list, active",
    "encounter diagnosis of 2026-11-10, no clinical status"."""
    return _record_words(_categories(r), _coding_code(r.get("clinicalStatus")), onset)


def _record_words(cats: list[str], status: str | None, onset: date | None) -> str:
    """condition_record of a Condition's categories (_categories) and clinicalStatus code (FactBuilder
    reads them once for this, condition_window and its status field)."""
    if "problem-list-item" in cats:
        kind = "problem list"
    elif "encounter-diagnosis" in cats:
        kind = "encounter diagnosis"
    elif cats:
        kind = f"{cats[0]} record"
    else:
        kind = "condition record"
    return ", ".join([kind, status or "no clinical status", f"dated {onset.isoformat()}" if onset else "undated"])


def _allergy_type(r: dict) -> str:
    """AllergyIntolerance.type: "allergy" or "intolerance" (R4 a code; R5 a CodeableConcept, its code), else
    "unknown"."""
    t = r.get("type")
    code = t if isinstance(t, str) else _coding_code(t) if isinstance(t, dict) else None
    return code if code in ("allergy", "intolerance") else "unknown"


def condition_window(r: dict, vs, policy: RecordPolicy) -> int | None:
    """The days a Condition counts from its latest date (records.yaml condition_windows), or None when it
    counts however old. A window applies to a condition in one of its value sets that is not on the problem
    list (an encounter diagnosis, or no problem-list-item category), whatever its clinicalStatus (EHRs send
    encounter diagnoses as active for ever), and to any such condition without a clinicalStatus; a
    problem-list entry with a status follows its status. In several windowed value sets: the longest window."""
    return _window_days(_categories(r), _coding_code(r.get("clinicalStatus")), vs, policy)


def _window_days(cats: list[str], status: str | None, vs, policy: RecordPolicy) -> int | None:
    """condition_window of a Condition's categories (_categories), clinicalStatus code and value sets."""
    if "problem-list-item" in cats and status is not None:
        return None
    days = [d for sets, d in policy.condition_windows if not sets.isdisjoint(vs)]
    return max(days) if days else None


class FactBuilder:
    """Builds the fact list for one evaluation."""

    def __init__(self, terminology: Terminology, policy: RecordPolicy, now: datetime | None = None,
                 latest_observations_only: bool = False, need_vs: frozenset[str] = frozenset()):
        """need_vs: record fact types (medication, condition, allergy, procedure) whose every rule
        pattern asks for a non-empty `vs`: a record of such a type that no value set knows is counted but
        not built into a fact (no rule could match it; `explain` asks for every fact)."""
        self.term = terminology
        self.need_vs = need_vs
        self.policy = policy
        self.now = now or datetime.now(timezone.utc)
        self.today = self.now.date()
        self.facts: list[dict] = []
        self.index = ResourceIndex()
        self.latest_only = latest_observations_only
        self._pending_observations: list[tuple] = []
        self._cues = compile_cues(policy.text_negation_cues)
        # value-set lists of the policy that each record is checked against, as sets once per evaluation
        self._allergy_sets = frozenset(policy.allergy_condition_valuesets)
        self._route_sets = frozenset(policy.injectable_valuesets) | frozenset(policy.non_injection_valuesets)
        self._region_sets = frozenset(policy.region_valuesets)
        self._unrecognised_orders: set[str] = set()   # draft procedure orders not recognised as a TPI, with an injectate
        self._ingredient_gaps: set[tuple[str, str]] = set()   # (Medication, ingredient reference) already named

    # -- helpers ------------------------------------------------------------------------------
    def _emit(self, t: str, fields: dict) -> dict:
        """A fact of type t with these fields (after t and fid). The fields come as a dict, not as keyword
        arguments: a keyword call builds one more dict per fact (~0.4 us each, ~32 facts per evaluation of
        benchmarks/evaluate.py's request)."""
        fact = {"t": t, "fid": len(self.facts) + 1, **fields}
        self.facts.append(fact)
        return fact

    def _member(self, codes, texts) -> tuple[list[str], list[str]]:
        return self.term.match(codes, texts).sorted_lists

    def _member_affirmed(self, codes, texts) -> tuple[list[str], list[str]]:
        """_member of the codes and the affirmed parts of the texts (see _affirmed): a negation cue in a
        text only stops a TEXT match; a coded match always counts."""
        return self.term.match_affirmed(codes, texts, self._cues).sorted_lists

    def _affirmed_clauses(self, text: str) -> list[str]:
        """A text's clauses without the concepts a negation or history cue denies ("no cellulitis", "sepsis
        ruled out"; not "cellulitis, not improving"): those are not matched by text
        (terminology.affirmed_clauses)."""
        return self.term.affirmed_clauses(text, self._cues)

    def _age_days(self, d: date | None) -> int | None:
        return (self.today - d).days if d else None

    def _current(self, r: dict) -> bool:
        return is_current(r, self.policy.for_type(r.get("resourceType", "")), self.today)

    def _vs_names(self, codes: list) -> list[str]:
        """The names the value sets give these codes (a code sent without a display reads as its name)."""
        return [d for d in (self.term.display_of(s_, c_) for s_, c_ in codes) if d]

    def _ingredients(self, med: dict) -> list[tuple[list, list, dict | None]]:
        """(codes, texts, strength) of each ingredient of a Medication (R4 item[x], R5 item), a
        referenced substance or Medication read through its code."""
        out = []
        for ing in med.get("ingredient") or []:
            if not isinstance(ing, dict):
                continue
            item = ing.get("itemCodeableConcept") or (ing.get("item") or {}).get("concept")
            iref = ing.get("itemReference") or (ing.get("item") or {}).get("reference")
            codes, texts = _codeable(item)
            sub = self.index.resolve(iref, med) if iref else None
            if sub is not None:
                c, t = _codeable(sub.get("code"))
                codes, texts = codes + c, texts + t
            elif isinstance(iref, dict):
                self._unresolved_ingredient(med, iref)
                if isinstance(iref.get("display"), str) and iref["display"].strip():
                    texts = texts + [iref["display"]]
            out.append((codes, texts, ing.get("strength") or ing.get("strengthRatio")))
        return out

    def _unresolved_ingredient(self, med: dict, iref: dict) -> None:
        """An ingredient reference (a Substance, a Medication) that is not in the input: a gap, once per
        Medication and reference (audit-3 m12: an NDC-only Medication whose only ingredient is a Substance
        reference was read as nothing, silently)."""
        key = ref_key(med) or "a Medication"
        ref = iref.get("reference") if isinstance(iref.get("reference"), str) else "(no reference)"
        if (key, ref) in self._ingredient_gaps:
            return
        self._ingredient_gaps.add((key, ref))
        display = iref.get("display") if isinstance(iref.get("display"), str) and iref["display"].strip() else None
        self._gap(key, f"ingredient of {key} not found",
                  f"its ingredient reference {ref} could not be resolved, so "
                  + (f"that ingredient was read only by its display '{display}'" if display else
                     "what it contains is not known (anticoagulant, anesthetic, steroid, epinephrine)"))

    def _note_texts(self, r: dict) -> list[str]:
        """A record's notes, one clause at a time, without the clauses that deny ("no steroid given")."""
        out = []
        for note in r.get("note") or []:
            if isinstance(note, dict) and isinstance(note.get("text"), str):
                out += self._affirmed_clauses(note["text"])
        return out

    def _name(self, codes: list, texts: list, fallback: str) -> str:
        """How a card names a coded thing: its text or a display the record gives, else the name the value
        sets give one of its codes (a product code sent without a display), else its first code."""
        if texts:
            return texts[0]
        named = self._vs_names(codes)
        if named:
            return named[0]
        return f"{codes[0][0].rsplit('/', 1)[-1]} {codes[0][1]}" if codes else fallback

    def _medication_of(self, r: dict) -> tuple[list, list, str, dict | None]:
        """Codes, texts, display name and the Medication resource (if any) of a medication record."""
        codes, texts, med = [], [], None
        cc = r.get("medicationCodeableConcept")
        mref = r.get("medicationReference")
        if isinstance(r.get("medication"), dict):  # R5 CodeableReference
            cc = r["medication"].get("concept")
            mref = r["medication"].get("reference")
        own_name = None  # the record's own words: its concept's text, else its first display; else its Medication's
        if cc:
            codes, texts = _codeable(cc)
            own_name = str(cc["text"]) if isinstance(cc, dict) and cc.get("text") else next(iter(texts), None)
        ingredient_texts: list[str] = []
        ref_display = mref.get("display") if isinstance(mref, dict) and isinstance(mref.get("display"), str) else None
        if mref:
            med = self.index.resolve(mref, r)
            if med is not None:
                c2, t2 = _codeable(med.get("code"))
                codes += c2
                texts += t2
                if own_name is None:
                    code = med.get("code")
                    own_name = str(code["text"]) if isinstance(code, dict) and code.get("text") else next(iter(t2), None)
                for c3, t3, _ in self._ingredients(med):
                    codes += c3
                    texts += t3
                    ingredient_texts += t3 or self._vs_names(c3)
            else:
                ref = mref.get("reference") if isinstance(mref, dict) else None
                if ref_display:
                    texts.append(ref_display)
                self._gap(ref_key(r) or "", f"medication of {ref_key(r) or 'a record'} not found",
                          f"its reference {ref} could not be resolved, so "
                          + (f"it was read only by its display '{ref_display}': ingredients it does not name (e.g."
                             " epinephrine, which changes an anesthetic's maximum) are not known" if ref_display else
                             "what it is (anesthetic, steroid, epinephrine, strengths) is not known"))
        # the record's own words first, then the value sets' name for its codes, the reference's display,
        # the ingredients; a raw (local) code last
        if own_name is not None:
            name = own_name
        else:
            name = (next(iter(self._vs_names(codes)), None)
                    or ref_display or (" / ".join(dict.fromkeys(ingredient_texts)) if ingredient_texts else None)
                    or self._name(codes, [], "unnamed medication"))
        return codes, texts, name, med

    def _product(self, r: dict) -> tuple[planned.Product, list, list]:
        """A medication order's product (value sets, names, ingredients with strengths), codes and texts.
        Product codes without a display are read with the display the value sets give them."""
        codes, texts, name, med = self._medication_of(r)
        named = self._vs_names(codes)
        vs = self.term.match(codes, texts).all
        ingredients = [(self.term.match(c, t + self._vs_names(c)).all, strength)
                       for c, t, strength in (self._ingredients(med) if med else ())]
        product = planned.Product(name, vs, tuple(dict.fromkeys([name] + texts + named)), tuple(ingredients))
        return product, codes, texts + named

    def _site_name(self, cc, fallback: str = "") -> str:
        """How a card names one body site (a CodeableConcept): its text; else the display, or the name the
        value sets give, of its coding that is in a body-region value set (records.yaml region_valuesets),
        else in any value set, with the words of its codings that are in none appended (a laterality
        coding "Left": "Pectoralis major muscle, left"), never the laterality alone; else `fallback`
        (a site sent as codes no value set names)."""
        if isinstance(cc, dict) and isinstance(cc.get("concept"), dict):  # R5 CodeableReference
            cc = cc["concept"]
        if not isinstance(cc, dict):
            return fallback
        if isinstance(cc.get("text"), str) and cc["text"].strip():
            return bounded_text(cc["text"].strip())
        regions = set(self.policy.region_valuesets)
        placed, other, unnamed = [], [], []   # (rank, words): 0 in a region value set, 1 in another one
        for c in cc.get("coding") if isinstance(cc.get("coding"), list) else ():
            if not isinstance(c, dict):
                continue
            code = (c["system"], str(c["code"])) if isinstance(c.get("system"), str) and c.get("code") else None
            words = (bounded_text(str(c["display"])).strip() if c.get("display") else "") or (
                (self.term.display_of(*code) or "") if code else "")
            vs = self.term.match([code] if code else [], [words] if words else []).all
            if vs & regions:
                placed.append((0, words))
            elif vs:
                placed.append((1, words))
            elif words:
                other.append(words)
            elif code:
                unnamed.append(f"{code[0].rsplit('/', 1)[-1]} {code[1]}")
        named = [w for _, w in sorted(placed, key=lambda p: p[0]) if w]
        if not named and not unnamed:
            return fallback if placed else ", ".join(dict.fromkeys(other))
        name = named[0] if named else unnamed[0]   # a site coded by a code no value set names: that code
        extra = [w.lower() for w in dict.fromkeys(other) if len(w.split()) <= 3 and w.lower() not in name.lower()]
        return ", ".join([name] + extra)

    def _site_words(self, concepts) -> str:
        """Body sites as the record words them, for a card ("Left buttock, Right trapezius"): each
        CodeableConcept as _site_name names it (its text, else its site coding's display with its
        laterality: "Pectoralis major muscle, left", else the code no value set names)."""
        words = [self._site_name(cc) for cc in concepts if isinstance(cc, dict)]
        return ", ".join(dict.fromkeys(w for w in words if w))

    def _regions(self, codes: list, texts: list[str]) -> list[str]:
        vs, _ = self._member(codes, texts)
        if self._region_sets.isdisjoint(vs):
            return []  # most conditions name no region: 0.07 us, where the scan in policy order took 0.4 us
        return [v for v in self.policy.region_valuesets if v in vs]

    # -- per resource type ----------------------------------------------------------------------
    def _gap(self, ref: str, what: str, why: str) -> None:
        """A gap fact: what could not be read or checked (the summary's words) and why."""
        self._emit("gap", {"ref": _printable(ref), "what": _printable(what), "why": _printable(why),
                          "name": _printable(f"{what}: {why}")})

    def build(self, inputs: Inputs) -> list[dict]:
        """All facts for these inputs."""
        record, drafts = inputs.record, inputs.drafts
        self.index = ResourceIndex(inputs.full_urls, record + drafts)
        for ref, text in inputs.gaps:
            self._gap(ref, *gap_parts(text))

        counts = dict(medications=0, allergies=0, conditions=0, procedures=0, observations=0, patient=0, orders=0, injectates=0, sites=0)
        for rt, n in inputs.unread.items():  # records given but not read (no rule could match them)
            counts[COUNTED_AS[rt]] += n
        administered = self._administrations(record)
        own_tpis = {id(a): info for a, info, parent in administered if info is not None and parent is None}
        # the plain record types: (reader, inventory count, currency policy), one look-up per record
        readers = {rt: (read, COUNTED_AS[rt], self.policy.for_type(rt)) for rt, read in (
            ("MedicationRequest", self._medication), ("MedicationStatement", self._medication),
            ("Condition", self._condition), ("AllergyIntolerance", self._allergy), ("Observation", self._observation))}
        for r in record:
            rt = r.get("resourceType")
            plain = readers.get(rt)
            if plain is not None:
                read, counted, policy = plain
                counts[counted] += 1
                if is_current(r, policy, self.today):
                    read(r)
            elif rt == "Patient":
                counts["patient"] += 1
                self._patient(r)
            elif rt == "Procedure":
                counts["procedures"] += 1
                if self._current(r):
                    self._procedure(r, [a for a, _, parent in administered if parent is not None and parent == ref_key(r)]
                                    if administered else [])
            elif rt == "MedicationAdministration" and id(r) in own_tpis:  # a TPI of its own, not read with a Procedure
                self._administered_tpi(r, own_tpis[id(r)])
                counts["procedures"] += 1
        self._build_observations()
        self._later_records()
        orders, injectates = self._orders(drafts)
        counts["orders"], counts["injectates"] = len(orders), len(injectates)
        counts["sites"] = sum(1 for f in self.facts if f["t"] == "site")
        unread_sites = self._unread_sites(record, drafts, {f["ref"] for f in orders}) if not counts["sites"] else []
        self._emit("inventory", {"checked": sorted(inputs.checked), "unread_sites": unread_sites,
                                 "unread_site_count": len(unread_sites), **counts})
        return self.facts

    def _later_records(self) -> None:
        """On each dated condition fact: the value sets of the current conditions dated after it (later_vs)
        and the answer value sets (value_vs) of the results dated after it that are the newest of a value set
        (later_result_vs), so a rule can say what followed a diagnosis (a delivery after a pregnancy, a newer
        negative test) without comparing two facts' dates (a gt/lt join, which durable-rules cannot do).
        Dates are whole days: the same day is not later."""
        dated = [f for f in self.facts if f["t"] == "condition" and isinstance(f.get("onset_days"), int)]
        if not dated:
            return
        later_conditions = _newer_than([(c["onset_days"], c["vs"]) for c in dated])
        later_results = _newer_than([(f["age_days"], f["value_vs"]) for f in self.facts
                                     if f["t"] == "observation" and f.get("latest_in") and f.get("value_vs")
                                     and isinstance(f.get("age_days"), int)])
        for c in dated:
            c["later_vs"] = later_conditions(c["onset_days"])
            c["later_result_vs"] = later_results(c["onset_days"])

    def _patient(self, r: dict) -> None:
        born = parse_date(r.get("birthDate"))
        age = None
        if born:
            age = self.today.year - born.year - ((self.today.month, self.today.day) < (born.month, born.day))
        fields = {"ref": ref_key(r) or "Patient", "name": "patient", "vs": [], "text_only": []}
        if age is not None:
            fields["age_years"] = age
        if r.get("gender"):
            fields["sex"] = r["gender"]
        # Patient.deceased[x]: deceasedBoolean true, or a deceasedDateTime (the date, as recorded)
        died = r.get("deceasedDateTime")
        if r.get("deceasedBoolean") is True or (isinstance(died, str) and died):
            fields["deceased"] = True
            if isinstance(died, str) and died:
                fields["deceased_date"] = died[:10]
        self._emit("patient", fields)

    def _medication(self, r: dict) -> None:
        codes, texts, name, _ = self._medication_of(r)
        vs, text_only = self._member(codes, texts)
        # how a drug is given (injectable, non-injection words such as 'Oral Tablet') is no rule's concern
        ruled = not self._route_sets.issuperset(vs)
        if not vs and codes and not texts:
            # a current medication sent only as codes no value set knows, with no name anywhere (a product
            # code the value sets lack): it cannot be told apart from an anticoagulant; say so
            self._gap(ref_key(r) or "", f"medication {name} not identified",
                      f"{ref_key(r) or 'a medication record'} is sent only as a code the value sets do not know "
                      "and without a name, so the anticoagulant, antiplatelet and diabetes-medication checks "
                      "could not include it")
        if not ruled and "medication" in self.need_vs:
            return
        self._emit("medication", {"ref": ref_key(r) or "", "name": name, "vs": vs, "text_only": text_only,
                                  "status": r.get("status", ""), "source": r["resourceType"]})

    def _condition(self, r: dict) -> None:
        codes, texts = _codeable(r.get("code"))
        vs, text_only = self._member_affirmed(codes, texts)
        if not vs and "condition" in self.need_vs:
            return
        name = self._name(codes, texts, "condition")
        # Dated by its LATEST date (onset, onset period, recorded date): an encounter diagnosis recorded
        # two days ago with an onset 70 days back is a current problem, not history (records.yaml).
        onset = _condition_date(r)
        # its categories and clinicalStatus, read once for the three that use them
        cats, status = _categories(r), _coding_code(r.get("clinicalStatus"))
        recorded_as = _record_words(cats, status, onset)
        if not self._allergy_sets.isdisjoint(vs):
            self._allergy_status(r, codes, texts, name, recorded_as)
        age = self._age_days(onset)
        window = _window_days(cats, status, vs, self.policy)
        if window is not None and age is not None and age > window:
            return  # an old encounter diagnosis (or one with no status) of a windowed condition: history, not current
        base = {"ref": ref_key(r) or "", "name": name, "vs": vs, "text_only": text_only,
                "status": status or "unknown", "recorded_as": recorded_as}
        if onset:
            base["onset_days"] = age
        # its bodySite: the value sets the site alone is in (infection-buttock for a SNOMED "Cellulitis"
        # whose bodySite is "Buttock"), so a rule can place an infection by where it was recorded, and
        # its words for a card
        sites = [cc for cc in r.get("bodySite") or () if isinstance(cc, dict)] if isinstance(r.get("bodySite"), list) else []
        body_codes, body_texts = [], []
        for cc in sites:
            c, t = _codeable(cc)
            body_codes, body_texts = body_codes + c, body_texts + t
        base["site_vs"] = self._member(body_codes, body_texts)[0] if body_codes or body_texts else []
        if sites and (recorded := self._site_words(sites)):
            base["site"] = recorded
        # the region: of the body site, else of what the code says (an ICD-10-CM "cellulitis of back" code, its text)
        regions = self._regions(codes + body_codes, texts + body_texts) or ["unknown"]
        for region in regions:
            self._emit("condition", {"region": region, "region_name": self._region_name(region), **base})

    def _region_name(self, region: str) -> str:
        """A body region as a card names it: its value set's title without "Region: " ("lower back")."""
        d = self.term.defs.get(region)
        return d.title.removeprefix("Region: ") if d is not None else region

    def _allergy(self, r: dict) -> None:
        own_codes, own_texts = _codeable(r.get("code"))
        codes, texts, said = list(own_codes), list(own_texts), []
        for reaction in r.get("reaction") or []:
            if not isinstance(reaction, dict):
                continue
            c, t = _codeable(reaction.get("substance"))
            codes += c
            texts += t
            # what the reaction was to, as written ("hives and throat tightness after lidocaine at the
            # dentist"): EHRs record an allergen "Other" and say the drug only here
            if isinstance(reaction.get("description"), str) and reaction["description"].strip():
                said.append(bounded_text(reaction["description"].strip()))
        notes = self._note_texts(r)
        described = [p for d in said for p in self._affirmed_clauses(d)] + notes
        vs, text_only = self._without_reading_sets(*self._member(codes, texts + described))
        if not vs and "allergy" in self.need_vs:
            return
        name = self._name(own_codes, own_texts, "allergy")
        if described and set(vs) - set(self._member(codes, texts)[0]):
            # the drug is named only in the reaction's description or a note: the card says where
            words = " ".join((said[0] if said else notes[0]).split())
            name += f" (reaction recorded: {words if len(words) <= 120 else words[:119].rstrip() + '…'})"
        self._emit("allergy", {"ref": ref_key(r) or "", "name": name, "vs": vs, "text_only": text_only,
                               "criticality": r.get("criticality", "unknown"), "type": _allergy_type(r),
                               "verification": _coding_code(r.get("verificationStatus")) or "unknown",
                               "status": _coding_code(r.get("clinicalStatus")) or "unknown"})

    def _without_reading_sets(self, vs: list[str], text_only: list[str]) -> tuple[list[str], list[str]]:
        """An allergy's value sets without allergy_condition_valuesets: those say that a Condition is an
        allergy, not what it is an allergy to ("allergy" in a reaction's words is no finding)."""
        drop = self.policy.allergy_condition_valuesets
        return [v for v in vs if v not in drop], [v for v in text_only if v not in drop]

    def _allergy_status(self, r: dict, codes: list, texts: list[str], name: str, recorded_as: str) -> None:
        """An allergy recorded on the problem list (a Condition in records.yaml allergy_condition_valuesets:
        ICD-10-CM Z88.x 'Allergy status to ...', Z91.040 'Latex allergy status', 'Allergy to lidocaine'):
        an allergy fact as well, so the allergy rules see it; the card names it as the record it is."""
        vs, text_only = self._member_affirmed(codes, texts)
        if self._allergy_sets.isdisjoint(vs):
            return
        vs, text_only = self._without_reading_sets(vs, text_only)
        if not vs and "allergy" in self.need_vs:
            return
        self._emit("allergy", {"ref": ref_key(r) or "", "name": f"{name} ({recorded_as.split(',')[0]}, not the allergy list)",
                               "vs": vs, "text_only": text_only, "criticality": "unknown", "type": "unknown",
                               "verification": _coding_code(r.get("verificationStatus")) or "unknown",
                               "status": _coding_code(r.get("clinicalStatus")) or "unknown"})

    def _observation(self, r: dict) -> None:
        """First pass: value sets and date only; the facts are built in _build_observations. Each
        `component` (a PT/INR panel's INR) whose code a value set knows is a result of its own, dated and
        statused like its Observation."""
        codes, texts = _codeable(r.get("code"))
        # by code; a lab with a local code only also by its words (records.yaml observation_text_match)
        found, by_text = lab_membership(self.term, self.policy, codes, texts)
        when = observation_date(r)
        age = self._age_days(when) if when else None
        components = r.get("component")
        parts = []
        for i, c in enumerate(components if isinstance(components, list) else ()):
            if not isinstance(c, dict):
                continue
            ccodes, ctexts = _codeable(c.get("code"))
            cfound, cby_text = lab_membership(self.term, self.policy, ccodes, ctexts)
            if cfound:
                parts.append((c, ccodes, ctexts, sorted(cfound), sorted(cby_text), when, age, (r, i, codes, texts)))
        # a local panel named by its words ("PT/INR") whose component is that result: the component is read,
        # not the panel (which has no value of its own)
        if parts:
            found -= by_text & {v for p in parts for v in p[3]}
        if found:
            self._pending_observations.append((r, codes, texts, sorted(found), sorted(by_text & found), when, age, None))
        self._pending_observations += parts

    def _build_observations(self) -> None:
        """Observation facts with latest_in: the value sets in which each is the newest (ties: all)."""
        newest: dict[str, int] = {}
        for _, _, _, vs, _, _, age, _ in self._pending_observations:
            if age is not None:
                for v in vs:
                    if v not in newest or age < newest[v]:
                        newest[v] = age
        for r, codes, texts, vs, text_only, when, age, parent in self._pending_observations:
            latest_in = [v for v in vs if age is not None and newest.get(v) == age]
            if self.latest_only and not latest_in:
                continue  # no rule can match an older result (see Evaluator)
            name = _display(r.get("code"), "observation", (codes, texts))
            if parent is None:
                ref = ref_key(r) or ""
            else:  # a component: its Observation, and which component (counting from 1) it is
                owner, i, pcodes, ptexts = parent
                ref = f"{ref_key(owner) or 'Observation'} component {i + 1}"
                name = f"{name} (in {_display(owner.get('code'), 'observation', (pcodes, ptexts))})"
            fields = {"ref": ref, "name": name, "vs": vs, "text_only": text_only,
                      "code": f"{codes[0][0]}|{codes[0][1]}" if codes else "", "latest_in": latest_in}
            if age is not None:
                fields["age_days"] = age
                fields["date"] = when.isoformat()  # for a card: which result, of when
            problem = self._observation_value(r, vs, fields)
            if problem and latest_in:
                # the newest result of a value set the rules compare, and its value cannot be compared
                compared = next((self.term.defs[v].title for v in latest_in if v in self.term.defs), "")
                self._gap(fields["ref"], f"{fields['name']} ({fields['ref'] or 'no id'}) not read",
                          problem.rstrip(".") + (f"; the checks that compare the newest {compared} result did not use it"
                                                 if compared else ""))
            self._emit("observation", fields)
        self._pending_observations = []

    def _unit_conversion(self, unit: str) -> dict | None:
        """records.yaml observation_units for a unit: as written, else ignoring case and spaces (one
        conversion only: a unit text two entries convert differently is not converted)."""
        table = self.policy.observation_units
        if unit in table:
            return table[unit]
        key = unit.replace(" ", "").lower()
        found = {(c["unit"], c["factor"]) for u, c in table.items() if u.replace(" ", "").lower() == key}
        if len(found) == 1:
            target, factor = found.pop()
            return {"unit": target, "factor": factor}
        return None

    @staticmethod
    def _own_conversion(expected: dict, key: str, want: str) -> dict | None:
        """records.yaml observation_values/<set>/units: a unit only this value set's results are also sent
        in (HbA1c in mmol/mol), as value x factor + offset in `want`; looked up ignoring case and spaces."""
        for unit, conv in expected.get("units", {}).items():
            if unit.replace(" ", "").lower() == key:
                return {"unit": want, "factor": conv["factor"], "offset": conv.get("offset", 0)}
        return None

    def _number_text(self, text: str):
        """A result written as text, without the abnormal flags a lab prints beside it (records.yaml
        result_flags: "3.4 H", "38 L x10(3)/mcL", "H 3.4", "45 K/uL (H)", "2.1*"): a _NUMBER match of
        (comparator, number, unit or None), or None when it is not a number."""
        flags = self.policy.result_flags

        def flag(token: str) -> bool:
            t = token.lower()
            return t in flags or t.strip("()[]") in flags

        tokens = text.split()
        while tokens and flag(tokens[0]):
            tokens.pop(0)
        m = _NUMBER.match(" ".join(tokens))
        if not m or not m[3]:
            return m
        rest = []
        for token in m[3].split():
            if not flag(token):
                # a mark stuck to the unit ("K/uL*"): the unit without it
                stripped = token.rstrip("*!") if "*" in flags or "!" in flags else token
                rest.append(stripped or token)
        unit = " ".join(rest) or None
        return (m[0], m[1], m[2], unit)

    def _observation_value(self, r: dict, vs: list[str], fields: dict) -> str | None:
        """Add value, unit, comparator and value_vs (the value sets of a coded or text answer) to an
        observation's fields. Returns why the value cannot be compared, for a value set whose unit
        records.yaml observation_values fixes (else None)."""
        expected = next((self.policy.observation_values[v] for v in vs if v in self.policy.observation_values), None)
        raw, comparator, units, shown = None, None, [], None
        q = r.get("valueQuantity")
        if isinstance(q, dict) and isinstance(q.get("value"), (int, float)) and not isinstance(q.get("value"), bool):
            raw, comparator = float(q["value"]), q.get("comparator")
            units = planned.quantity_units(q, self.policy)  # a UCUM or mapped code (records.yaml unit_codes), its text
            shown = f"{q.get('comparator') or ''}{q['value']} {q.get('unit') or q.get('code') or ''}".strip()
        elif isinstance(r.get("valueString"), str):
            shown = r["valueString"].strip()
            m = self._number_text(shown)
            if m:
                raw, comparator = float(m[2]), m[1]
                units = [m[3]] if m[3] else []
        codes, texts = _codeable(r.get("valueCodeableConcept"))
        if raw is None and isinstance(r.get("valueString"), str):
            texts = texts + [r["valueString"]]
        if codes or texts:
            fields["value_vs"], _ = self._member_affirmed(codes, texts)
        if comparator:
            comparator = _COMPARATORS.get(comparator, comparator)
            if comparator not in ("<", "<=", ">", ">="):
                return f"its value {shown!r} has a comparator ({comparator}) that cannot be compared" if expected else None
            fields["comparator"] = comparator
        if raw is None:
            if expected is None:
                return None
            if shown:
                return f"its value {shown!r} is not a number the checks can compare"
            return "it has no value" + (f" ({_display(r.get('dataAbsentReason'), '')})" if r.get("dataAbsentReason") else "")
        if expected is None:  # no fixed unit: converted when the table knows the unit, else as written
            unit = units[0] if units else ""
            conv = self.policy.observation_units.get(unit)
            value = raw * conv["factor"] if conv else raw
            fields["value"], fields["unit"] = round(value, 4), conv["unit"] if conv else unit
            return None
        want = expected["unit"]
        if not units:
            if expected.get("unitless_max") is not None and raw <= expected["unitless_max"]:
                fields["value"], fields["unit"] = round(raw, 4), want
                return None
            fields["unit"] = ""
            return f"its value {shown!r} has no unit (the checks compare {want})"
        for unit in units:
            key = unit.replace(" ", "").lower()
            conv = ({"unit": want, "factor": 1} if key == want.replace(" ", "").lower()
                    else self._own_conversion(expected, key, want) or self._unit_conversion(unit))
            if conv and conv["unit"] == want:
                fields["value"], fields["unit"] = round(raw * conv["factor"] + conv.get("offset", 0), 4), want
                return None
        fields["unit"] = units[0]
        return f"its unit {units[0]!r} cannot be converted to {want} (rules/records.yaml observation_units)"

    def _procedure(self, r: dict, administrations: list[dict]) -> None:
        codes, texts = _codeable(r.get("code"))
        vs, text_only = self._member(codes, texts)
        if not vs and "procedure" in self.need_vs:
            return
        when = _procedure_date(r)
        used_codes, used_texts = [], []
        for cc in r.get("usedCode") or []:
            c, t = _codeable(cc)
            used_codes += c
            used_texts += t
        used_texts += self._note_texts(r)
        # what was injected, as its own name may say ("TRIGGER POINT INJ W/ KENALOG 40 MG"): its texts, clause
        # by clause, without denied ones ("trigger point injection, no steroid")
        for text in texts:
            used_texts += self._affirmed_clauses(text)
        key = ref_key(r)
        for a in administrations:  # partOf it, or the same day's TPI administration (see _administrations)
            c, t, _, _ = self._medication_of(a)
            used_codes += c
            used_texts += t
        used_vs, _ = self._member(used_codes, used_texts)
        fields = {"ref": key or "", "name": _display(r.get("code"), "procedure", (codes, texts)), "vs": vs, "text_only": text_only,
                  "used_vs": used_vs, "status": r.get("status", "")}
        sites = r.get("bodySite")
        if isinstance(sites, list) and sites and (recorded := self._site_words(sites)):
            fields["site"] = recorded  # for a card: where it was given
        if when:
            fields["age_days"] = self._age_days(when)
            fields["date"] = when.isoformat()
        self._emit("procedure", fields)

    def _administrations(self, record: list[dict]) -> list[tuple[dict, tuple | None, str | None]]:
        """Each current MedicationAdministration with what it is for the TPI checks: (administration, its
        TPI reading or None (_tpi_administration), the Procedure it is read with or None). An
        administration partOf a Procedure is read with it; so is a TPI administration with no partOf on
        the day of a current TPI Procedure: EHRs record one injection as a Procedure and an unlinked MAR
        entry, and it must count once (its drug still says whether a steroid was given)."""
        given = [a for a in record if a.get("resourceType") == "MedicationAdministration" and self._current(a)]
        if not given:
            return []  # most records have none: their Procedures are not read twice
        tpi_days: dict[date, str] = {}
        for r in record:
            if r.get("resourceType") == "Procedure" and self._current(r):
                codes, texts = _codeable(r.get("code"))
                when = _procedure_date(r)
                if when and ref_key(r) and set(self._member(codes, texts)[0]) & set(self.policy.tpi_order_valuesets):
                    tpi_days.setdefault(when, ref_key(r))
        out = []
        for a in given:
            parent = next((ref_key(t) for t in (self.index.resolve(p, a) for p in a.get("partOf") or [])
                           if isinstance(t, dict) and t.get("resourceType") == "Procedure"), None)
            info = self._tpi_administration(a)
            if parent is None and info is not None and info[2] in tpi_days:
                parent = tpi_days[info[2]]
            out.append((a, info, parent))
        return out

    def _tpi_administration(self, a: dict) -> tuple[list[str], list[str], date | None] | None:
        """(vs, text_only, date) of an administration whose reason, category, notes or dosage text/site say
        it was a trigger point injection (tpi_order_valuesets); None for any other administration."""
        codes, texts = [], []
        concepts = list(a.get("reasonCode") or []) + [x for x in a.get("reason") or [] if isinstance(x, dict)]
        category = a.get("category")  # R4: one CodeableConcept; R5: a list
        concepts += category if isinstance(category, list) else [category]
        dosage = a.get("dosage") if isinstance(a.get("dosage"), dict) else {}
        concepts += [dosage.get("site"), dosage.get("route")]
        for cc in concepts:
            c, t = _codeable(cc)
            codes, texts = codes + c, texts + t
        if isinstance(dosage.get("text"), str):
            texts.append(dosage["text"])
        texts += self._note_texts(a)
        vs, text_only = self._member(codes, texts)
        if not set(vs) & set(self.policy.tpi_order_valuesets):
            return None
        # R4 effective[x]; R5 occurence[x] (spelt so in R5)
        when = parse_date(a.get("effectiveDateTime") or _get(a.get("effectivePeriod"), "start")
                          or a.get("occurenceDateTime") or _get(a.get("occurencePeriod"), "start"))
        return vs, text_only, when

    def _administered_tpi(self, a: dict, tpi: tuple[list[str], list[str], date | None]) -> None:
        """A past trigger point injection recorded only as a MedicationAdministration (no Procedure it is
        read with in the record): a procedure fact."""
        vs, text_only, when = tpi
        dosage = a.get("dosage") if isinstance(a.get("dosage"), dict) else {}
        med_codes, med_texts, name, _ = self._medication_of(a)
        used_vs, _ = self._member(med_codes, med_texts)
        reasons = [_display(cc) for cc in list(a.get("reasonCode") or []) + list(a.get("reason") or [])
                   if isinstance(cc, dict)]  # R4 reasonCode, R5 reason (CodeableReference)
        why = next((x for x in reasons if x), "")  # e.g. "TRIGGER POINT INJECTION - RIGHT TRAPEZIUS": where it was
        fields = dict(ref=ref_key(a) or "", name=f"{name} (administered as a trigger point injection"
                                                 + (f": {why})" if why else ")"), vs=vs,
                      text_only=text_only, used_vs=used_vs, status=a.get("status", ""))
        if recorded := self._site_words([dosage.get("site")]):
            fields["site"] = recorded
        if when:
            fields["age_days"] = self._age_days(when)
            fields["date"] = when.isoformat()
        self._emit("procedure", fields)

    # -- the planned order (what it is and its doses: order.py) ---------------------------------------
    def _weight_kg(self) -> float | None:
        """The latest body weight in kg within the dose policy's window, if any."""
        limits = self.policy.anesthetic_limits
        if limits is None:
            return None
        for f in self.facts:
            if (f["t"] == "observation" and limits.weight_valueset in f.get("latest_in", ()) and f.get("unit") == "kg"
                    and isinstance(f.get("value"), float) and f.get("age_days") is not None
                    and 0 <= f["age_days"] <= limits.weight_max_age_days and f["value"] > 0
                    and not f.get("comparator")):  # ">150 kg" is a bound, not a weight
                return f["value"]
        return None

    def _how_given(self, r: dict, vs: list[str]) -> set[str]:
        """The value sets that say how a draft medication is given: of its product (name, codes: vs), its
        dosageInstruction routes and texts, and its Medication's form (R4 medicationReference, R5
        medication.reference, contained)."""
        codes, texts = [], []
        dosages = r.get("dosageInstruction")
        for di in dosages if isinstance(dosages, list) else ():
            if isinstance(di, dict):
                c, t = _codeable(di.get("route"))
                codes, texts = codes + c, texts + t + ([di["text"]] if isinstance(di.get("text"), str) else [])
        mref = r.get("medicationReference") or (r["medication"].get("reference") if isinstance(r.get("medication"), dict) else None)
        med = self.index.resolve(mref, r) if mref else None
        for key in ("form", "doseForm"):  # R4 Medication.form, R5 Medication.doseForm
            c, t = _codeable((med or {}).get(key))
            codes, texts = codes + c, texts + t
        return set(vs) | (self.term.match(codes, texts).all if codes or texts else set())

    def _injectable(self, r: dict, vs: list[str], dose: planned.Dose) -> bool:
        """A draft medication given by injection: dosed in a volume, or its name, form, route or dosage
        text in records.yaml injectable_valuesets; never one clearly given otherwise (_not_injected)."""
        given = self._how_given(r, vs)
        if self._not_injected(given):
            return False
        return dose.ml is not None or bool(given & set(self.policy.injectable_valuesets))

    def _not_injected(self, given: set[str]) -> bool:
        """Clearly not an injection: a route, form, name or dosage word in records.yaml
        non_injection_valuesets (oral, topical, transdermal; tablet, dose pack, patch) and none in
        injectable_valuesets. No route and no such word is not clear (the draft stays injectate)."""
        return bool(given & set(self.policy.non_injection_valuesets)) and not given & set(self.policy.injectable_valuesets)

    @staticmethod
    def _order_texts(o: dict) -> list[tuple[str, str]]:
        """(where, text) of what an order says in words besides its code: orderDetail (R4 CodeableConcept
        text and displays; R5 parameter valueString / valueCodeableConcept), note and patientInstruction
        (R4 string; R5 instructionMarkdown)."""
        out: list[tuple[str, str]] = []
        details = o.get("orderDetail")
        for i, od in enumerate(details if isinstance(details, list) else ()):
            if not isinstance(od, dict):
                continue
            texts = list(_codeable(od)[1])
            params = od.get("parameter")
            for prm in params if isinstance(params, list) else ():
                if isinstance(prm, dict):
                    texts += [prm["valueString"]] if isinstance(prm.get("valueString"), str) else []
                    texts += _codeable(prm.get("valueCodeableConcept"))[1]
            out += [(f"orderDetail[{i}]", t) for t in texts]
        notes = o.get("note")
        for i, note in enumerate(notes if isinstance(notes, list) else ()):
            if isinstance(note, dict) and isinstance(note.get("text"), str):
                out.append((f"note[{i}]", note["text"]))
        instruction = o.get("patientInstruction")
        if isinstance(instruction, str):
            out.append(("patientInstruction", instruction))
        for i, pi in enumerate(instruction if isinstance(instruction, list) else ()):
            if isinstance(pi, dict) and isinstance(pi.get("instructionMarkdown"), str):
                out.append((f"patientInstruction[{i}]", pi["instructionMarkdown"]))
        return [(where, bounded_text(text)) for where, text in out if text.strip()]

    def _order_text_parts(self, o: dict, ignore: set[str]):
        """(where, part, vs, text_only, signature) for each product-like part of what an order says in words
        (_order_texts, clause by clause, split where it separates ingredients), matched by its words without
        denied ones ("no steroid", "Kenalog not given"): the signature is its value sets less `ignore`, and a
        part with the signature of an earlier one (the same thing written in orderDetail and in a note) is
        given once."""
        seen: set[frozenset] = set()
        for where, text in self._order_texts(o):
            for clause in CLAUSES.split(text):
                for part in planned.components(clause):
                    vs, text_only = self._member_affirmed([], [part])
                    sig = frozenset(vs) - ignore
                    if sig in seen:
                        continue
                    seen.add(sig)
                    yield where, part, vs, text_only, sig

    def _text_injectates(self, o: dict, injectates: list[dict], doses: list) -> None:
        """The injectate of a TPI order that has no MedicationRequest of its own (none basedOn it), as the
        order's words name it: its orderDetail, note and patientInstruction, clause by clause without
        denied clauses ("no steroid"), each product of a clause ("Lidocaine 1% 5 mL + triamcinolone
        (Kenalog) 40 mg") that an injectate value set knows is an injectate fact named by its words (ref:
        the order and where, e.g. "ServiceRequest/sr1 orderDetail[0]", never the order itself, so no card
        offers to delete the order), so the steroid, allergy, diabetes and pregnancy checks see it. The
        same product written twice (orderDetail and note) counts once; one an unlinked draft of the order
        set already orders is not repeated. Its dose is not read from the text: an anesthetic's dose fact
        says it was not read (missing-data)."""
        key = ref_key(o) or ""
        if any(f.get("order") == key for f in injectates):
            return  # its MedicationRequests say what it is: a note repeating them adds nothing
        how = set(self.policy.injectable_valuesets) | set(self.policy.non_injection_valuesets)
        kinds = set(self.policy.injectate_valuesets)
        known: set[str] = set()
        for f in injectates:
            if not f.get("order"):  # an unlinked draft: part of the order set
                known |= set(f["vs"]) - how
        for where, part, vs, text_only, sig in self._order_text_parts(o, how):
            if not sig & kinds or sig <= known:
                continue
            ref = f"{key} {where}"
            product = planned.Product(part, frozenset(vs), (part,))
            field_name = where.split("[", 1)[0]
            dose = planned.Dose(text=f"written only in the order's {field_name}, not ordered as a medication: its dose was not read")
            doses += planned.agent_doses(product, dose, ref, self.term, self.policy)
            injectates.append(self._emit("injectate", {"ref": ref, "name": part, "vs": vs, "text_only": text_only,
                                                       "order": key, "dose_text": ""}))

    def _order_site(self, o: dict, site: dict, written_in: str = "") -> None:
        """Site facts of one body site of a TPI order, once per body region (`unknown` when none);
        `written_in`: where a site that is not the order's bodySite was read (named on the card)."""
        c, t = _codeable(site)
        t = t + self._vs_names(c)
        svs, s_text_only = self._member(c, t)
        regions = [v for v in self.policy.region_valuesets if v in svs] or ["unknown"]
        name = self._site_name(site) or self._name(c, t, "site")
        if written_in:
            name = f"{name} (written in {written_in})"
        key = ref_key(o) or ""
        for region in regions:
            self._emit("site", {"ref": key, "order": key, "name": name, "vs": svs, "text_only": s_text_only, "region": region})

    def _fallback_sites(self, o: dict, drafts: list[dict]) -> None:
        """The injection site of a TPI order that has no bodySite, where else the order set writes it
        (audit-3b s11, s12): the dosageInstruction.site of the MedicationRequests basedOn it; else each
        part of its orderDetail / note / patientInstruction (clause by clause, denied words dropped) that a
        body-region value set (records.yaml region_valuesets) recognises, once per set of value sets. Each
        site is named as recorded, with the field it was read from."""
        key = ref_key(o) or ""
        found = False
        for r in drafts:
            if r.get("resourceType") != "MedicationRequest" or key not in {self.index.key_for(b) for b in r.get("basedOn") or []}:
                continue
            for di in r.get("dosageInstruction") or []:
                site = di.get("site") if isinstance(di, dict) else None
                if isinstance(site, dict) and (_codeable(site)[0] or _codeable(site)[1]):
                    self._order_site(o, site, f"{ref_key(r) or 'the injectate order'} dosageInstruction.site")
                    found = True
        if found:
            return
        regions = set(self.policy.region_valuesets)
        other = set(self.policy.tpi_order_valuesets) | set(self.policy.injectate_valuesets) | set(self.policy.injectable_valuesets)
        # ("TPI to bilat rhomboids" is the site "bilateral rhomboids" again: the TPI words are left out)
        for where, part, _, _, sig in self._order_text_parts(o, other):
            if sig & regions:
                self._order_site(o, {"text": part}, f"the order's {where.split('[', 1)[0]}")

    def _unread_sites(self, record: list[dict], drafts: list[dict], read: set[str]) -> list[str]:
        """Injection sites the input gives that were not read as the planned order's (for local-infection,
        which must not say "no injection site is given" then): the bodySite of a TPI ServiceRequest that is
        not the planned order (a status records.yaml does not count, performed, not among the draft
        orders), or of a draft procedure order not recognised as a TPI with an injectate ordered with it;
        and a ServiceRequest a draft injectate is basedOn that is not in the input at all."""
        out: list[str] = []
        for r in record + drafts:
            key = ref_key(r)
            if r.get("resourceType") != "ServiceRequest" or not key or key in read:
                continue
            sites = [cc for cc in r.get("bodySite") or [] if isinstance(cc, dict)]
            tpi = planned.is_tpi(r, self.term, self.policy)
            if not sites or not (tpi or key in self._unrecognised_orders):
                continue
            why = f"status {_text(r.get('status')) or 'not given'}" + ("" if tpi else ", not recognised as a trigger point injection")
            words = self._site_words(sites) or "coded"
            out.append(f"{key} ({why}) has the injection site {words} but was not read as the planned order")
        for r in drafts:
            if r.get("resourceType") != "MedicationRequest":
                continue
            for b in r.get("basedOn") or []:
                key = self.index.key_for(b)
                if key and key.startswith("ServiceRequest/") and key not in read and self.index.resolve(b, r) is None:
                    out.append(f"{key}, the order {ref_key(r) or 'a draft medication'} is basedOn, is not in the input, so its injection site is not known")
        return list(dict.fromkeys(out))

    def _orders(self, drafts: list[dict]) -> tuple[list[dict], list[dict]]:
        sr_policy = self.policy.for_type("ServiceRequest")
        orders = [r for r in drafts if planned.is_tpi(r, self.term, self.policy)
                  and (sr_policy.status is None or _text(r.get("status")) in sr_policy.status)]
        order_keys = {ref_key(o) for o in orders}
        order_facts = []
        for o in orders:
            codes, texts = _codeable(o.get("code"))
            vs, text_only = self._member(codes, texts)
            order_facts.append(self._emit("order", {"ref": ref_key(o) or "", "name": _display(o.get("code"), "trigger point injection"),
                                                    "vs": vs, "text_only": text_only, "code": codes[0][1] if codes else ""}))
            sites = [site for site in o.get("bodySite") or [] if isinstance(site, dict)]
            for site in sites:
                self._order_site(o, site)
            if not sites:
                self._fallback_sites(o, drafts)
        injectates, doses = [], []
        # draft procedure orders that are not recognised as a TPI: said when an injectate is ordered with one
        other_orders = {key: r for r in drafts
                        if r.get("resourceType") == "ServiceRequest" and (key := ref_key(r)) and key not in order_keys}
        unrecognised: dict[str, list[str]] = {}
        for r in drafts:
            if r.get("resourceType") != "MedicationRequest":
                continue
            product, codes, texts = self._product(r)
            vs, text_only = self._member(codes, texts)
            based_on = {self.index.key_for(b) for b in r.get("basedOn") or []}
            classified = bool(set(vs) & set(self.policy.injectate_valuesets))
            for key in based_on & other_orders.keys() if classified else ():
                unrecognised.setdefault(key, []).append(product.name)
            dose = planned.ordered_dose(r, self.policy)
            linked = bool(based_on & order_keys)
            if classified and not linked and self._not_injected(self._how_given(r, vs)):
                # a steroid or anesthetic of the same visit given another way (an oral Medrol Dosepak, a
                # Lidoderm patch): not the TPI's injectate (records.yaml non_injection_valuesets)
                continue
            if not classified:
                if orders and (linked or (not based_on and self._injectable(r, vs, dose))):
                    # part of the order (or an injection beside it), but not a drug the checks know: say so
                    kinds = " or ".join(self.term.defs[v].title.lower() for v in self.policy.injectate_valuesets if v in self.term.defs)
                    self._gap(ref_key(r) or "", f"draft medication {product.name} not recognised",
                              f"{ref_key(r) or 'no id'} is not recognised as {kinds}, so the anesthetic and steroid "
                              "checks are incomplete")
                if not linked:
                    continue
            fields = {"ref": ref_key(r) or "", "name": product.name, "vs": vs, "text_only": text_only,
                      "order": next(iter(based_on & order_keys), "") or "", "dose_text": dose.text}
            # dose_text is always present ("" when the order has no dose at all): rule templates read it.
            per_agent = planned.agent_doses(product, dose, ref_key(r) or "", self.term, self.policy)
            known = [d.mg for d in per_agent if d.mg is not None]
            if len(per_agent) == 1 and known:
                fields["dose_mg"] = known[0]
            elif not per_agent and dose.mg is not None:
                fields["dose_mg"] = dose.mg
            doses += per_agent
            injectates.append(self._emit("injectate", fields))
        for o in orders:  # an order with no MedicationRequest of its own: its injectate as its words name it
            self._text_injectates(o, injectates, doses)
        self._unrecognised_orders = set(unrecognised)
        for key, drugs in unrecognised.items():
            tpi_sets = " / ".join(f"rules/valuesets/{v}.json" for v in self.policy.tpi_order_valuesets)
            o = other_orders[key]
            name = self._name(*_codeable(o.get("code")), "procedure order")
            self._gap(key, f"draft order {name} not recognised as a trigger point injection",
                      f"{key} has {' and '.join(dict.fromkeys(drugs))} ordered with it, but its code is not in the trigger point "
                      f"injection value sets ({tpi_sets}), so its injection site was not read: the site, infection, "
                      "thoracic and interval checks did not include it")
        age = next((f["age_years"] for f in self.facts if f["t"] == "patient" and "age_years" in f), None)
        dose_facts, total = planned.dose_facts(doses, self._weight_kg(), self.policy, age)
        for f in dose_facts:
            self._emit("dose", f)
        if total:
            self._emit("dose-total", total)
        return order_facts, injectates
