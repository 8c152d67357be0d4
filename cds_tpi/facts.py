"""Resources -> plain facts the rules match (types and fields in ruleset/facttypes.py).

Generic FHIR reading only: which records count as current comes from rules/records.yaml,
what a code means comes from rules/valuesets. No drug names, codes or thresholds live here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from .fhir.refs import ResourceIndex, ref_key
from .ruleset.records import RecordPolicy
from .terminology import Terminology, _words

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_MG_PER_ML = re.compile(r"(\d+(?:\.\d+)?)\s*MG\s*/\s*ML", re.IGNORECASE)


@dataclass
class Inputs:
    """What one evaluation is about, as resources (already validated) by role."""

    record: list[dict]                     # the patient's record
    drafts: list[dict] = field(default_factory=list)  # the planned order (see Document.with_drafts)
    gaps: list[tuple[str, str]] = field(default_factory=list)   # (ref or location, what could not be read)
    checked: set[str] = field(default_factory=set)               # record lists looked up, even if empty
    full_urls: dict[int, str] = field(default_factory=dict)     # id(resource) -> fullUrl


def parse_date(value) -> date | None:
    """The (first) day of a FHIR date/dateTime/instant; None when unparsable."""
    if not isinstance(value, str):
        return None
    if len(value) >= 10 and value[4] == "-" and value[7] == "-":
        try:
            return date.fromisoformat(value[:10])  # the common full date / dateTime
        except ValueError:
            pass
    m = _DATE.match(value)
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1))
    except ValueError:
        return None


def _codeable(cc) -> tuple[list[tuple[str, str]], list[str]]:
    """(system, code) pairs and texts of a CodeableConcept (R4) or CodeableReference (R5)."""
    if not isinstance(cc, dict):
        return [], []
    if "concept" in cc and isinstance(cc["concept"], dict):  # R5 CodeableReference
        cc = cc["concept"]
    codes, texts = [], []
    # Also called on records not validated yet (is this Observation one we read? is this draft a TPI?):
    # a coding list or system of the wrong JSON type is no code, not a crash.
    codings = cc.get("coding")
    for c in codings if isinstance(codings, list) else ():
        if isinstance(c, dict):
            if isinstance(c.get("system"), str) and c["system"] and c.get("code"):
                codes.append((c["system"], str(c["code"])))
            if c.get("display"):
                texts.append(str(c["display"]))
    if cc.get("text"):
        texts.append(str(cc["text"]))
    return codes, texts


def _display(cc, fallback: str = "", parsed=None) -> str:
    """Text of a CodeableConcept, else its first display, else system code."""
    if isinstance(cc, dict) and cc.get("text"):
        return str(cc["text"])
    codes, texts = parsed if parsed is not None else _codeable(cc)
    return texts[0] if texts else (f"{codes[0][0].rsplit('/', 1)[-1]} {codes[0][1]}" if codes else fallback)


def _printable(text: str) -> str:
    """text with lone surrogates written as \\udXXX escapes. Names of skipped records come from input that
    was not valid (e.g. a Python dict holding "\\ud800"); durable-rules rejects such strings, and no JSON
    encoder writes them as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _coding_code(cc) -> str | None:
    if isinstance(cc, dict):
        for c in cc.get("coding") or []:
            if isinstance(c, dict) and c.get("code"):
                return str(c["code"])
    return None


class FactBuilder:
    """Builds the fact list for one evaluation."""

    def __init__(self, terminology: Terminology, policy: RecordPolicy, now: datetime | None = None,
                 latest_observations_only: bool = False):
        self.term = terminology
        self.policy = policy
        self.now = now or datetime.now(timezone.utc)
        self.today = self.now.date()
        self.facts: list[dict] = []
        self.index = ResourceIndex()
        self.latest_only = latest_observations_only
        self._pending_observations: list[tuple] = []
        self._cues = [tuple(_words(c)) for c in policy.text_negation_cues if _words(c)]

    # -- helpers ------------------------------------------------------------------------------
    def _emit(self, t: str, **fields) -> dict:
        fact = {"t": t, "fid": len(self.facts) + 1, **fields}
        self.facts.append(fact)
        return fact

    def _member(self, codes, texts) -> tuple[list[str], list[str]]:
        return self.term.match(codes, texts).sorted_lists

    def _affirmed(self, texts: list[str]) -> list[str]:
        """Texts without a negation or history cue (those are not matched by text)."""
        out = []
        for text in texts:
            words = _words(text)
            present = set(words)
            negated = False
            for cue in self._cues:
                if cue[0] in present and (len(cue) == 1 or any(
                        tuple(words[i : i + len(cue)]) == cue for i in range(len(words) - len(cue) + 1))):
                    negated = True
                    break
            if not negated:
                out.append(text)
        return out

    def _age_days(self, d: date | None) -> int | None:
        return (self.today - d).days if d else None

    def _current(self, r: dict) -> bool:
        """Does this record count, per rules/records.yaml?"""
        p = self.policy.for_type(r.get("resourceType", ""))
        if p.status is not None and r.get("status") not in p.status:
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
        if p.exclude_abated:
            for key in ("abatementDateTime", "abatementPeriod", "abatementAge", "abatementRange", "abatementString", "abatementBoolean"):
                if key in r:
                    when = parse_date(r[key]) if key == "abatementDateTime" else parse_date((r[key] or {}).get("end") if isinstance(r[key], dict) else None)
                    if key == "abatementBoolean" and r[key] is False:
                        continue
                    if when is None or when <= self.today:
                        return False
        if p.exclude_ended_period:
            period = r.get("effectivePeriod")
            end = parse_date(period.get("end")) if isinstance(period, dict) else None
            if end is not None and end < self.today:
                return False
        return True

    def _medication_of(self, r: dict) -> tuple[list, list, str, dict | None]:
        """Codes, texts, display name and the Medication resource (if any) of a medication record."""
        codes, texts, name, med = [], [], "", None
        cc = r.get("medicationCodeableConcept")
        mref = r.get("medicationReference")
        if isinstance(r.get("medication"), dict):  # R5 CodeableReference
            cc = r["medication"].get("concept")
            mref = r["medication"].get("reference")
        if cc:
            codes, texts = _codeable(cc)
            name = _display(cc)
        if mref:
            med = self.index.resolve(mref, r)
            if med is not None:
                c2, t2 = _codeable(med.get("code"))
                codes += c2
                texts += t2
                name = name or _display(med.get("code"))
                for ing in med.get("ingredient") or []:
                    item = ing.get("itemCodeableConcept") or (ing.get("item") or {}).get("concept")
                    iref = ing.get("itemReference") or (ing.get("item") or {}).get("reference")
                    if item:
                        c3, t3 = _codeable(item)
                        codes += c3
                        texts += t3
                    if iref:
                        sub = self.index.resolve(iref, med)
                        if sub is not None:
                            c3, t3 = _codeable(sub.get("code"))
                            codes += c3
                            texts += t3
                if not name:
                    name = ", ".join(texts[:1]) or "medication"
            elif not cc:
                ref = mref.get("reference") if isinstance(mref, dict) else None
                name = (mref.get("display") if isinstance(mref, dict) else None) or str(ref)
                if isinstance(mref, dict) and mref.get("display"):
                    texts.append(mref["display"])
                self._emit("gap", ref=ref_key(r) or "", name=f"the medication of {ref_key(r) or 'a record'} ({ref}) could not be resolved")
        return codes, texts, name or "unnamed medication", med

    def _regions(self, codeables: list, extra_texts: list[str] = ()) -> list[str]:
        codes, texts = [], list(extra_texts)
        for cc in codeables:
            c, t = _codeable(cc)
            codes += c
            texts += t
        vs, _ = self._member(codes, texts)
        return [v for v in self.policy.region_valuesets if v in vs]

    # -- per resource type ----------------------------------------------------------------------
    def build(self, inputs: Inputs) -> list[dict]:
        """All facts for these inputs."""
        record, drafts = inputs.record, inputs.drafts
        for r in record + drafts:
            self.index.add(r, inputs.full_urls.get(id(r)))
        for ref, what in inputs.gaps:
            self._emit("gap", ref=_printable(ref), name=_printable(what))

        counts = dict(medications=0, allergies=0, conditions=0, procedures=0, observations=0, patient=0, orders=0, injectates=0, sites=0)
        administrations = [r for r in record if r.get("resourceType") == "MedicationAdministration"]
        for r in record:
            rt = r.get("resourceType")
            if rt == "Patient":
                counts["patient"] += 1
                self._patient(r)
            elif rt in ("MedicationRequest", "MedicationStatement"):
                counts["medications"] += 1
                if self._current(r):
                    self._medication(r)
            elif rt == "Condition":
                counts["conditions"] += 1
                if self._current(r):
                    self._condition(r)
            elif rt == "AllergyIntolerance":
                counts["allergies"] += 1
                if self._current(r):
                    self._allergy(r)
            elif rt == "Observation":
                counts["observations"] += 1
                if self._current(r):
                    self._observation(r)
            elif rt == "Procedure":
                counts["procedures"] += 1
                if self._current(r):
                    self._procedure(r, administrations)
        self._build_observations()
        orders, injectates = self._orders(drafts)
        counts["orders"], counts["injectates"] = len(orders), len(injectates)
        counts["sites"] = sum(1 for f in self.facts if f["t"] == "site")
        self._emit("inventory", checked=sorted(inputs.checked), **counts)
        return self.facts

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
        self._emit("patient", **fields)

    def _medication(self, r: dict) -> None:
        codes, texts, name, _ = self._medication_of(r)
        vs, text_only = self._member(codes, texts)
        self._emit("medication", ref=ref_key(r) or "", name=name, vs=vs, text_only=text_only,
                   status=r.get("status", ""), source=r["resourceType"])

    def _condition(self, r: dict) -> None:
        codes, texts = _codeable(r.get("code"))
        vs, text_only = self._member(codes, self._affirmed(texts))
        name = _display(r.get("code"), "condition", (codes, texts))
        onset = parse_date(r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start") or r.get("recordedDate"))
        base = dict(ref=ref_key(r) or "", name=name, vs=vs, text_only=text_only,
                    status=_coding_code(r.get("clinicalStatus")) or "unknown")
        if onset:
            base["onset_days"] = self._age_days(onset)
        regions = self._regions(r.get("bodySite") or [], texts) or ["unknown"]
        for region in regions:
            self._emit("condition", region=region, **base)

    def _allergy(self, r: dict) -> None:
        codes, texts = _codeable(r.get("code"))
        for reaction in r.get("reaction") or []:
            c, t = _codeable(reaction.get("substance"))
            codes += c
            texts += t
        vs, text_only = self._member(codes, texts)
        self._emit("allergy", ref=ref_key(r) or "", name=_display(r.get("code"), "allergy"), vs=vs, text_only=text_only,
                   criticality=r.get("criticality", "unknown"),
                   verification=_coding_code(r.get("verificationStatus")) or "unknown",
                   status=_coding_code(r.get("clinicalStatus")) or "unknown")

    def _observation(self, r: dict) -> None:
        """First pass: value sets and date only; the facts are built in _build_observations."""
        codes, texts = _codeable(r.get("code"))
        vs, text_only = self._member(codes, [])  # labs are matched by code only
        if not vs:
            return
        when = parse_date(r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("end")
                          or (r.get("effectivePeriod") or {}).get("start") or r.get("effectiveInstant") or r.get("issued"))
        self._pending_observations.append((r, codes, texts, vs, text_only, self._age_days(when) if when else None))

    def _build_observations(self) -> None:
        """Observation facts with latest_in: the value sets in which each is the newest (ties: all)."""
        newest: dict[str, int] = {}
        for _, _, _, vs, _, age in self._pending_observations:
            if age is not None:
                for v in vs:
                    if v not in newest or age < newest[v]:
                        newest[v] = age
        for r, codes, texts, vs, text_only, age in self._pending_observations:
            latest_in = [v for v in vs if age is not None and newest.get(v) == age]
            if self.latest_only and not latest_in:
                continue  # no rule can match an older result (see Evaluator)
            fields = dict(ref=ref_key(r) or "", name=_display(r.get("code"), "observation", (codes, texts)), vs=vs,
                          text_only=text_only, code=f"{codes[0][0]}|{codes[0][1]}" if codes else "", latest_in=latest_in)
            if age is not None:
                fields["age_days"] = age
            q = r.get("valueQuantity")
            if isinstance(q, dict) and isinstance(q.get("value"), (int, float)) and not isinstance(q.get("value"), bool):
                unit = q.get("code") or q.get("unit") or ""
                conv = self.policy.observation_units.get(unit)
                value = float(q["value"])
                if conv:
                    value, unit = value * conv["factor"], conv["unit"]
                fields["value"] = round(value, 4)
                fields["unit"] = unit
            self._emit("observation", **fields)
        self._pending_observations = []

    def _procedure(self, r: dict, administrations: list[dict]) -> None:
        codes, texts = _codeable(r.get("code"))
        vs, text_only = self._member(codes, texts)
        when = parse_date(r.get("performedDateTime") or (r.get("performedPeriod") or {}).get("start")
                          or r.get("occurrenceDateTime") or (r.get("occurrencePeriod") or {}).get("start"))
        used_codes, used_texts = [], []
        for cc in r.get("usedCode") or []:
            c, t = _codeable(cc)
            used_codes += c
            used_texts += t
        for note in r.get("note") or []:
            if isinstance(note, dict) and isinstance(note.get("text"), str):
                # Notes are free text: one clause at a time, and clauses that deny ("no steroid") are dropped.
                used_texts += self._affirmed(re.split(r"[.;\n]+", note["text"]))
        key = ref_key(r)
        for a in administrations:
            if any(self.index.key_for(p) == key for p in a.get("partOf") or []):
                c, t, _, _ = self._medication_of(a)
                used_codes += c
                used_texts += t
        used_vs, _ = self._member(used_codes, used_texts)
        fields = dict(ref=key or "", name=_display(r.get("code"), "procedure"), vs=vs, text_only=text_only,
                      used_vs=used_vs, status=r.get("status", ""))
        if when:
            fields["age_days"] = self._age_days(when)
        self._emit("procedure", **fields)

    # -- the planned order ------------------------------------------------------------------------
    def is_tpi(self, r: dict) -> bool:
        if r.get("resourceType") != "ServiceRequest":
            return False
        codes, texts = _codeable(r.get("code"))
        vs, _ = self._member(codes, texts)
        return any(v in vs for v in self.policy.tpi_order_valuesets)

    def _orders(self, drafts: list[dict]) -> tuple[list[dict], list[dict]]:
        sr_policy = self.policy.for_type("ServiceRequest")
        orders = [r for r in drafts if self.is_tpi(r) and (sr_policy.status is None or r.get("status") in sr_policy.status)]
        order_keys = {ref_key(o) for o in orders}
        order_facts = []
        for o in orders:
            codes, texts = _codeable(o.get("code"))
            vs, text_only = self._member(codes, texts)
            order_facts.append(self._emit("order", ref=ref_key(o) or "", name=_display(o.get("code"), "trigger point injection"),
                                          vs=vs, text_only=text_only, code=codes[0][1] if codes else ""))
            for site in o.get("bodySite") or []:
                c, t = _codeable(site)
                svs, s_text_only = self._member(c, t)
                regions = [v for v in self.policy.region_valuesets if v in svs] or ["unknown"]
                for region in regions:
                    self._emit("site", ref=ref_key(o) or "", order=ref_key(o) or "", name=_display(site, "site"),
                               vs=svs, text_only=s_text_only, region=region)
        injectates = []
        for r in drafts:
            if r.get("resourceType") != "MedicationRequest":
                continue
            codes, texts, name, med = self._medication_of(r)
            vs, text_only = self._member(codes, texts)
            based_on = {self.index.key_for(b) for b in r.get("basedOn") or []}
            if not (based_on & order_keys) and not any(v in vs for v in self.policy.injectate_valuesets):
                continue
            fields = dict(ref=ref_key(r) or "", name=name, vs=vs, text_only=text_only,
                          order=next(iter(based_on & order_keys), "") or "")
            dose_mg, dose_text = self._dose_mg(r, med, name, texts)
            # dose_text is always present ("" when the order has no dose at all): rule templates read it
            # (`{% if d.dose_text %}`) and render strictly. dose_mg is present only when known.
            fields["dose_text"] = dose_text
            if dose_mg is not None:
                fields["dose_mg"] = dose_mg
            injectates.append(self._emit("injectate", **fields))
        return order_facts, injectates

    def _dose_mg(self, r: dict, med: dict | None, name: str, texts: list[str]) -> tuple[float | None, str]:
        """Ordered dose in mg: from a mass dose, or a volume dose times the product's concentration."""
        for di in r.get("dosageInstruction") or []:
            for dr in di.get("doseAndRate") or []:
                q = dr.get("doseQuantity")
                if not isinstance(q, dict) or not isinstance(q.get("value"), (int, float)):
                    continue
                unit = q.get("code") or q.get("unit") or ""
                text = f"{q['value']:g} {q.get('unit') or unit}".strip()
                factor = self.policy.dose_units.get(unit)
                if factor is not None:
                    return round(q["value"] * factor, 3), text
                if unit.lower() in ("ml", "milliliter", "millilitre"):
                    conc = self._mg_per_ml(med, [name] + texts)
                    if conc is not None:
                        return round(q["value"] * conc, 3), f"{text} ({conc:g} mg/mL)"
                return None, text
        return None, ""

    def _mg_per_ml(self, med: dict | None, texts: list[str]) -> float | None:
        if med:
            for ing in med.get("ingredient") or []:
                s = ing.get("strength") or ing.get("strengthRatio")
                if isinstance(s, dict):
                    num, den = s.get("numerator") or {}, s.get("denominator") or {}
                    nf = self.policy.dose_units.get(num.get("code") or num.get("unit") or "")
                    if nf and isinstance(num.get("value"), (int, float)) and (den.get("code") or den.get("unit") or "").lower() == "ml" and den.get("value"):
                        return num["value"] * nf / den["value"]
        for t in texts:
            m = _MG_PER_ML.search(t or "")
            if m:
                return float(m.group(1))
            m = _PERCENT.search(t or "")
            if m:
                return float(m.group(1)) * 10.0  # 1 % w/v = 10 mg/mL
        return None
