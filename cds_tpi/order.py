"""The planned TPI order as one concept: which draft is the TPI, what its injectate is, each local
anesthetic's dose (from a mass, or from a volume with that anesthetic's own strength), the summed
dose per agent against its maximum, and the order the CLI synthesizes from options.

What counts as a TPI, an injectate, an anesthetic, a vasoconstrictor and each agent's maximum comes
from rules/records.yaml and rules/valuesets; nothing clinical is written here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

from .errors import InputError
from .fhir.datatypes import codeable
from .fhir.refs import normalize
from .ruleset.records import AgentLimit, RecordPolicy

MAX_TEXT = 512  # characters of a product name read for strengths (names are short; bounds the regex work)

# A strength "10 MG/ML", "0.01 mg per mL", "2.5 MG/1 ML", and a percent "1%", "0.25 %". Quantifiers
# are bounded, so a search is linear in the text (no backtracking on long digit runs).
_STRENGTH = re.compile(
    r"(?<![\d.])(\d{1,6}(?:\.\d{1,6})?)\s{0,3}(mg|mcg|ug|g)\s{0,3}(?:/|per)\s{0,3}(\d{1,4}(?:\.\d{1,4})?)?\s{0,3}ml(?![a-z])",
    re.IGNORECASE)
_PERCENT = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,4})?)\s{0,3}%")
# Where a product name separates its ingredients: RxNorm's " / ", and "+", ";", "with", "w/", "and",
# a comma not inside a number ("1:100,000").
_COMPONENTS = re.compile(r"\s/\s|\+|;|\bwith\b|\bw/|\band\b|,(?!\d)", re.IGNORECASE)
# Reading one agent's strength, "in" also separates: a compounded "TRIAMCINOLONE 40 MG IN LIDOCAINE 1% 5 ML"
# or "bupivacaine 0.5 mg/mL in sodium chloride 0.9%" names the diluent's strength after "in", not the drug's.
_STRENGTH_PARTS = re.compile(_COMPONENTS.pattern + r"|\bin\b", re.IGNORECASE)
PERCENT_MG_PER_ML = 10.0  # 1 % w/v = 1 g / 100 mL = 10 mg/mL
# A name that describes a mixture of stock solutions drawn up together (records.yaml volume_units): a word
# for mixing, a "+" between the solutions, or a mixing ratio "1:1", "50:50", "2:1", "1:1:1" (parts of at most
# two digits, so an epinephrine ratio "1:100,000" / "1:200000" never reads as one).
_MIX_WORD = re.compile(r"\b(?:mix|mixt|mixture|mixed|admix|admixture)\b|\+", re.IGNORECASE)
_MIX_RATIO = re.compile(r"(?<![\d.,:])(\d{1,2}(?:\s{0,2}:\s{0,2}\d{1,2}){1,3})(?![\d.,:])")

UCUM = "http://unitsofmeasure.org"
_DOSE_OPTION = re.compile(r"^\s*(\d{1,6}(?:\.\d{1,6})?)\s{0,3}([A-Za-z\[\]]{1,10})\s*$")


# -- what a draft is -------------------------------------------------------------------------------

def is_tpi(resource, term, policy: RecordPolicy) -> bool:
    """A ServiceRequest whose code is in a TPI value set (records.yaml tpi_order_valuesets)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
        return False
    codes, texts = codeable(resource.get("code"))
    return not term.match(codes, texts).all.isdisjoint(policy.tpi_order_valuesets)


def is_tpi_order(resources, term, policy: RecordPolicy) -> bool:
    return any(is_tpi(r, term, policy) for r in resources)


def unrecognised_injection_orders(resources, term, policy: RecordPolicy) -> list[dict]:
    """Procedure orders among these drafts that are not recognised as a TPI but have a local anesthetic
    or steroid (injectate_valuesets, read from the MedicationRequest's medication concept or contained
    Medication) ordered with them by basedOn: they may be a TPI under a local code. The service
    evaluates such an order set, so the missing-data card can say the order was not recognised
    (the CLI always evaluates); an order set with nothing of the kind (a lab order) is not its business."""
    requests = {f"ServiceRequest/{r['id']}": r for r in resources
                if isinstance(r, dict) and r.get("resourceType") == "ServiceRequest" and isinstance(r.get("id"), str)
                and not is_tpi(r, term, policy)}
    found: dict[str, dict] = {}
    for r in resources:
        if not requests or not isinstance(r, dict) or r.get("resourceType") != "MedicationRequest":
            continue
        targets = [t for t in _based_on_refs(r) if t in requests]
        if not targets:
            continue
        if _is_injectate(r, term, policy):
            for t in targets:
                found.setdefault(t, requests[t])
    return list(found.values())


def _based_on_refs(r: dict) -> list[str]:
    """The `Type/id` of each reference in a request's basedOn (relative or absolute; a `#contained` or
    `urn:` reference names no resource of the order set by type and id, and stays as written)."""
    return [normalize(b["reference"]) for b in _list(r.get("basedOn"))
            if isinstance(b, dict) and isinstance(b.get("reference"), str)]


def _is_injectate(r: dict, term, policy: RecordPolicy) -> bool:
    """A MedicationRequest whose drug (medication concept, contained Medication, or the reference's
    display) is in the injectate value sets (a local anesthetic, a steroid, saline)."""
    codes, texts = codeable(r.get("medicationCodeableConcept") or _get(r.get("medication"), "concept"))
    for med in _list(r.get("contained")):
        if isinstance(med, dict) and med.get("resourceType") == "Medication":
            c, t = codeable(med.get("code"))
            codes, texts = codes + c, texts + t
    ref = r.get("medicationReference") or _get(r.get("medication"), "reference")
    if isinstance(ref, dict) and isinstance(ref.get("display"), str):
        texts.append(ref["display"])
    return bool(term.match(codes, texts).all & set(policy.injectate_valuesets))


def injectates_of_absent_orders(resources, term, policy: RecordPolicy) -> list[dict]:
    """Draft injectate MedicationRequests basedOn a ServiceRequest that is not among these drafts (an
    order signed earlier, an on-hold order the EHR did not send): they may be the injectate of a TPI.
    The service evaluates them (dose, allergy, steroid checks; the missing-data card says the order they
    are basedOn was not in the input, so its site was not read) rather than answering no cards."""
    present = {f"{r.get('resourceType')}/{r['id']}" for r in resources if isinstance(r, dict) and isinstance(r.get("id"), str)}
    out = []
    for r in resources:
        if not isinstance(r, dict) or r.get("resourceType") != "MedicationRequest":
            continue
        targets = _based_on_refs(r)
        if any(t.startswith("ServiceRequest/") and t not in present for t in targets) and _is_injectate(r, term, policy):
            out.append(r)
    return out


def injectates_for_tpi(resources, term, policy: RecordPolicy) -> list[dict]:
    """Draft injectate MedicationRequests that say they are for a trigger point injection (their reason,
    note, dosage text or instructions are in tpi_order_valuesets: "lidocaine 1% inj for TPI"), with no
    TPI order beside them: an order set of the medication alone. The service evaluates it (the CLI
    always evaluates), so its dose, allergy and steroid checks run instead of no answer at all."""
    out = []
    for r in resources:
        if not isinstance(r, dict) or r.get("resourceType") != "MedicationRequest":
            continue
        codes, texts = [], []
        concepts = _list(r.get("reasonCode")) + [x.get("concept") for x in _list(r.get("reason")) if isinstance(x, dict)]
        for di in _list(r.get("dosageInstruction")):
            if isinstance(di, dict):
                concepts += _list(di.get("additionalInstruction"))
                texts += [t for t in (di.get("text"), di.get("patientInstruction")) if isinstance(t, str)]
        for cc in concepts:
            c, t = codeable(cc)
            codes, texts = codes + c, texts + t
        texts += [n["text"] for n in _list(r.get("note")) if isinstance(n, dict) and isinstance(n.get("text"), str)]
        if (texts or codes) and term.match(codes, texts).all & set(policy.tpi_order_valuesets) and _is_injectate(r, term, policy):
            out.append(r)
    return out


def appointment_as_orders(appointment: dict) -> list[dict]:
    """What an Appointment says it is for, as order-like resources for `is_tpi_order`: the
    appointment itself, ServiceRequests it contains, and a draft ServiceRequest carrying its
    serviceType / appointmentType / reasonCode codings and its description."""
    if not isinstance(appointment, dict) or appointment.get("resourceType") != "Appointment":
        return []
    codings: list = []
    for concept in [appointment.get("appointmentType"), *_list(appointment.get("serviceType")),
                    *_list(appointment.get("reasonCode"))]:
        if isinstance(concept, dict):
            codings += [c for c in _list(concept.get("coding")) if isinstance(c, dict)]
    texts = [t for t in (appointment.get("description"), *(
        c.get("text") for c in _list(appointment.get("serviceType")) if isinstance(c, dict))) if isinstance(t, str)]
    code: dict = {}
    if codings:
        code["coding"] = codings
    if texts:
        code["text"] = "; ".join(texts)
    orders = [appointment]
    orders += [r for r in _list(appointment.get("contained"))
               if isinstance(r, dict) and r.get("resourceType") == "ServiceRequest"]
    if code:
        orders.append({"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal", "code": code})
    return orders


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else None


def _list(value) -> list:
    return value if isinstance(value, list) else []


# -- strengths and doses ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Product:
    """What a draft medication order is made of, as read from the record."""

    name: str
    vs: frozenset[str]                       # value sets of the product as a whole
    texts: tuple[str, ...]                   # its names: code text, displays, value-set names of its codes
    ingredients: tuple[tuple[frozenset[str], dict | None], ...] = ()   # (value sets, strength) per ingredient


def _ratio_mg_per_ml(strength, policy: RecordPolicy) -> float | None:
    """mg/mL of a FHIR Ratio strength (numerator mass or %, denominator mL)."""
    if not isinstance(strength, dict):
        return None
    num, den = strength.get("numerator"), strength.get("denominator") or {}
    if not isinstance(num, dict) or not isinstance(num.get("value"), (int, float)) or isinstance(num.get("value"), bool):
        return None
    nunits = quantity_units(num, policy)
    if "%" in nunits:
        return float(num["value"]) * PERCENT_MG_PER_ML
    factor = _first_factor(policy.dose_units, nunits)
    dvalue = den.get("value", 1) if isinstance(den, dict) else None
    dfactor = _first_factor(policy.volume_units, quantity_units(den, policy)) if isinstance(den, dict) else None
    if factor is None or dfactor is None or not isinstance(dvalue, (int, float)) or not dvalue:
        return None
    return float(num["value"]) * factor / (float(dvalue) * dfactor)


def quantity_units(q, policy: RecordPolicy) -> list[str]:
    """The units a FHIR Quantity is written in, the coded one first: its `code` when its system is UCUM
    or absent; a code of another system only through records.yaml unit_codes (Cerner's SNOMED CT
    258773002 is mL; a code no table knows is not a unit); then its `unit` text, always."""
    if not isinstance(q, dict):
        return []
    out: list[str] = []
    code, system = q.get("code"), q.get("system")
    if isinstance(code, str) and code.strip():
        if system is None or system == UCUM:
            out.append(code.strip())
        elif isinstance(system, str):
            mapped = (policy.unit_codes.get(system) or policy.unit_codes.get(system.rstrip("/")) or {}).get(code.strip())
            if mapped:
                out.append(mapped)
    unit = q.get("unit")
    if isinstance(unit, str) and unit.strip() and unit.strip() not in out:
        out.append(unit.strip())
    return out


def _first_factor(table: dict, units: list[str]) -> float | None:
    """The factor of the first of these units that the table knows."""
    return next((f for f in (_unit_factor(table, u) for u in units) if f is not None), None)


def _unit_factor(table: dict, unit: str) -> float | None:
    if unit in table:
        return float(table[unit])
    lowered = {k.lower(): v for k, v in table.items()}
    return float(lowered[unit.lower()]) if unit.lower() in lowered else None


def components(text: str) -> list[str]:
    """The parts of a text where it separates ingredients (" / ", "+", ";", "with", "w/", "and", a comma not
    in a number): "Lidocaine 1% 5 mL + triamcinolone (Kenalog) 40 mg" -> its two products."""
    return [p.strip() for p in _COMPONENTS.split(text[:MAX_TEXT]) if p.strip()]


def strengths_in(text: str, policy: RecordPolicy) -> set[float]:
    """Every mg/mL strength written in a text (mass per volume or percent), in mg/mL."""
    text = text[:MAX_TEXT]
    out: set[float] = set()
    for m in _STRENGTH.finditer(text):
        factor = _unit_factor(policy.dose_units, m.group(2))
        per = float(m.group(3)) if m.group(3) else 1.0
        if factor is not None and per > 0:
            out.add(round(float(m.group(1)) * factor / per, 6))
    for m in _PERCENT.finditer(text):
        out.add(round(float(m.group(1)) * PERCENT_MG_PER_ML, 6))
    return out


def _percents_in(text: str) -> set[float]:
    return {round(float(m.group(1)) * PERCENT_MG_PER_ML, 6) for m in _PERCENT.finditer(text[:MAX_TEXT])}


def agent_strength(product: Product, agent: str, others: set[str], term, policy: RecordPolicy) -> tuple[float | None, str]:
    """mg/mL of one anesthetic `agent` (a value set id) in a product, and how it was found.

    `others`: the value sets of the product's other active ingredients (another anesthetic, a
    vasoconstrictor, a steroid). 1) an ingredient of the Medication that is the agent, with a
    strength; 2) the part of a name that names the agent and nothing else ("... / lidocaine
    hydrochloride 10 MG/ML ..."); 3) a name of a product whose only other ingredient is a
    vasoconstrictor: its single percent ("LIDOCAINE-EPINEPHRINE 1 %-1:100,000"; vasoconstrictors are
    written as ratios or mg/mL, never percent); 4) a name of a single-ingredient product: its single
    strength. Otherwise unknown: never the first number of the name."""
    for vs, strength in product.ingredients:
        if agent in vs:
            conc = _ratio_mg_per_ml(strength, policy)
            if conc is not None:
                return conc, "ingredient strength"
    for text in product.texts:
        found: set[float] = set()
        for part in _STRENGTH_PARTS.split(text[:MAX_TEXT]):
            named = term.match([], [part]).all
            if agent in named and not (named & others):
                found |= strengths_in(part, policy)
        if len(found) == 1:
            return found.pop(), "strength in its name"
    vasoconstrictor = policy.anesthetic_limits.vasoconstrictor_valueset if policy.anesthetic_limits else None
    only_vasoconstrictor = others <= {vasoconstrictor}
    for text in product.texts:
        if only_vasoconstrictor:
            percents = _percents_in(text)
            if len(percents) == 1:
                return percents.pop(), "percent strength in its name"
        if not others:
            found = strengths_in(text, policy)
            if len(found) == 1:
                return found.pop(), "strength in its name"
    return None, ""


@dataclass(frozen=True)
class Mixture:
    """How a product with several anesthetics whose strengths come from its name is made up.

    `kind`: "final" - the name gives each anesthetic's concentration in the final product (RxNorm's
    "bupivacaine hydrochloride 3.75 MG/ML / lidocaine hydrochloride 10 MG/ML Injectable Solution":
    every anesthetic with a mass-per-volume strength and no percent), `texts` those names: the whole
    volume x each strength is right; "mixture" - the name describes stock solutions drawn up together
    ("lidocaine 1% / bupivacaine 0.25% 1:1 mixture": a percent strength and a word for mixing, a "+"
    or a mixing ratio): each strength is that of its stock solution, so each anesthetic's share of the
    volume is the ratio the name states (`shares`, by value set), or unknown (`shares` None) - never the
    whole volume x each stock strength; `texts` the mixture name."""

    kind: str
    texts: tuple[str, ...]
    shares: dict[str, float] | None = None
    ratio: str = ""


def _agent_parts(text: str, agents: set[str], term) -> list[tuple[str, str]] | None:
    """(agent, part) for each part of a name (split where it separates ingredients) that names one of these
    anesthetics, in the order the name gives them; None when a part names two (their order is unknown)."""
    out = []
    for part in _COMPONENTS.split(text[:MAX_TEXT]):
        named = term.match([], [part]).all & agents
        if len(named) > 1:
            return None
        if named:
            out.append((next(iter(named)), part))
    return out


def mixture(product: Product, agents: list[AgentLimit], term, policy: RecordPolicy) -> Mixture | None:
    """How a product holding two or more limited anesthetics is made up (see Mixture), when their
    strengths come from its names: a final-concentration name (RxNorm style, as a coded product's display
    or value-set name gives it) wins over a mixture name; None when every anesthetic has a
    Medication.ingredient strength (per mL of the final product: already right), when there is only one
    anesthetic, or when no name is of either kind (the strengths are then read as before)."""
    ids = {a.valueset for a in agents}
    if len(ids) < 2:
        return None
    with_strength = {a for vs, strength in product.ingredients for a in ids & vs
                     if _ratio_mg_per_ml(strength, policy) is not None}
    if with_strength >= ids:
        return None
    final, mixed = [], None
    for text in product.texts:
        parts = _agent_parts(text, ids, term)
        if parts is None:
            if _MIX_WORD.search(text[:MAX_TEXT]) and _percents_in(text):
                mixed = mixed or (text, None)
            continue
        named = [a for a, _ in parts]
        percent = any(_percents_in(p) for _, p in parts)
        if (not percent and set(named) == ids and len(named) == len(ids)
                and all(_STRENGTH.search(p[:MAX_TEXT]) for _, p in parts)):
            final.append(text)
        elif percent and (_MIX_WORD.search(text[:MAX_TEXT]) or _MIX_RATIO.search(text[:MAX_TEXT])) and mixed is None:
            mixed = (text, named)
    if final:
        return Mixture("final", tuple(final))
    if mixed is None:
        return None
    text, named = mixed
    ratio = _MIX_RATIO.search(text[:MAX_TEXT])
    if ratio and named is not None and set(named) == ids and len(named) == len(ids):
        weights = [float(w) for w in re.split(r"\s*:\s*", ratio.group(1).strip())]
        if len(weights) == len(named) and all(w > 0 for w in weights):
            return Mixture("mixture", (text,), {a: w / sum(weights) for a, w in zip(named, weights)},
                           re.sub(r"\s+", "", ratio.group(1)))
    return Mixture("mixture", (text,))


@dataclass(frozen=True)
class DoseLine:
    """What one dosageInstruction orders: its largest mass and its largest volume (its doseAndRate
    entries are the same dose written differently - ordered, calculated, admin amount - so the largest
    of each kind is taken, never their sum)."""

    mg: float | None = None
    ml: float | None = None
    mg_text: str = ""
    ml_text: str = ""

    @property
    def text(self) -> str:
        """Its mass and volume as ordered, "50 mg or 5 mL" when it gives both."""
        if self.mg_text and self.ml_text:
            return f"{self.mg_text} or {self.ml_text}"
        return self.mg_text or self.ml_text  # (not a join over a generator: 0.1 us, was 0.38 us)


@dataclass(frozen=True)
class Dose:
    """The ordered amount of one draft medication order: a mass in mg, or a volume in mL, as written.

    `mg` / `ml` are the totals over every dosageInstruction; `lines` holds each instruction's amount
    (empty when built directly: then `mg` / `ml` are the one line); `unread` the instructions that give
    no usable amount although others do (their dose is not counted and is named as unknown)."""

    mg: float | None = None
    ml: float | None = None
    text: str = ""          # as ordered, for cards ("10 mL", "inject 5 mL of 1%", "15 mL + 15 mL")
    lines: tuple[DoseLine, ...] = ()
    unread: tuple[str, ...] = ()

    def each(self) -> tuple[DoseLine, ...]:
        if self.lines:
            return self.lines
        if self.mg is None and self.ml is None:
            return ()
        return (DoseLine(self.mg, self.ml, self.text if self.mg is not None else "",
                         self.text if self.mg is None else ""),)


MAX_DOSAGES = 50  # dosageInstructions (and doseAndRate entries in each) read per order


def _quantity(dr) -> dict | None:
    """The amount of one doseAndRate: its doseQuantity, or the high end of its doseRange (the most that
    may be given; the low end when the range has no high)."""
    if not isinstance(dr, dict):
        return None
    q = dr.get("doseQuantity")
    if not isinstance(q, dict) and isinstance(dr.get("doseRange"), dict):
        rng = dr["doseRange"]
        q = rng.get("high") if isinstance(rng.get("high"), dict) else rng.get("low")
    if not isinstance(q, dict) or not isinstance(q.get("value"), (int, float)) or isinstance(q.get("value"), bool):
        return None
    return q


MAX_SITES = 100  # a count above this is not a number of injection sites (not read)


@functools.lru_cache(maxsize=8)
def _site_patterns(per_site_words: tuple[str, ...], count_words: tuple[str, ...], units: tuple[str, ...]):
    """Regexes of records.yaml per_site_dose (words) and the amounts (units of dose_units / volume_units):
    (per-site words, "N <count word>", "x N", "N x <amount>", "<amount> x N", an amount)."""
    def alternation(words):
        alts = sorted({re.escape(w.strip()).replace(r"\ ", r"\s{1,3}") for w in words if w.strip()}, key=len, reverse=True)
        return "|".join(alts) or r"(?!x)x"   # an empty list matches nothing
    unit = rf"(?:{alternation(units)})(?![A-Za-z])"
    amount = r"(\d{1,4}(?:\.\d{1,3})?)\s{0,3}(" + alternation(units) + r")(?![A-Za-z])"
    return (re.compile(rf"(?<![A-Za-z0-9])(?:{alternation(per_site_words)})(?![A-Za-z0-9])", re.IGNORECASE),
            re.compile(rf"(?<![\d.])(\d{{1,3}})\s{{0,3}}(?:{alternation(count_words)})(?![A-Za-z0-9])", re.IGNORECASE),
            re.compile(rf"(?<![A-Za-z0-9])[x×]\s{{0,3}}(\d{{1,3}})(?![\d.])(?!\s{{0,3}}{unit})", re.IGNORECASE),
            re.compile(rf"(?<![\d.])(\d{{1,3}})\s{{0,3}}[x×]\s{{0,3}}\d{{1,4}}(?:\.\d{{1,3}})?\s{{0,3}}{unit}", re.IGNORECASE),
            re.compile(rf"(?<![\d.]){amount}\s{{0,3}}[x×]\s{{0,3}}(\d{{1,3}})(?![\d.])", re.IGNORECASE),
            re.compile(rf"(?<![\d.]){amount}", re.IGNORECASE))


# The keys of a dosageInstruction _site_multiplier reads: its words (_dosage_words) and timing (_timing_count).
_WORDS_AND_TIMING = ("text", "patientInstruction", "additionalInstruction", "timing")


def _dosage_words(di: dict) -> str:
    """What a dosageInstruction says in words: its text, patientInstruction and additionalInstruction texts."""
    words = [di.get("text"), di.get("patientInstruction")]
    extra = di.get("additionalInstruction")
    for cc in extra if isinstance(extra, list) else ():
        words += [cc.get("text")] if isinstance(cc, dict) else []
    return " ; ".join(w for w in words if isinstance(w, str) and w.strip())[:MAX_TEXT]


def _timing_count(di: dict) -> int | None:
    """How many administrations a dosageInstruction orders (timing.repeat count, countMax when larger), when more than one."""
    repeat = _get(di.get("timing"), "repeat")
    counts = [c for c in (_get(repeat, "count"), _get(repeat, "countMax"))
              if isinstance(c, int) and not isinstance(c, bool) and 1 < c <= MAX_SITES]
    return max(counts) if counts else None


def _site_multiplier(di: dict, line: DoseLine, policy: RecordPolicy) -> tuple[int, str, bool]:
    """(how many times one dosageInstruction's amount is given, why, per site with no count stated).

    records.yaml per_site_dose: the timing.repeat.count, and for a dose its words say is per site ("5 mL
    per site x 6 sites", "3 mL each to 4 TPs", "5 mL x 6") the count of sites they state; the largest.
    A text amount that times the count is the ordered amount already gives the total (1). A per-site dose
    with no count anywhere: (1, "", True), never read as the whole dose."""
    if di.keys().isdisjoint(_WORDS_AND_TIMING):
        return 1, "", False  # the usual order: no words and no timing (0.15 us; reading both first was 1 us)
    words = _dosage_words(di)
    timing = _timing_count(di)
    if not words and not timing:
        return 1, "", False  # no words, no timing count (and no patterns to look up)
    units = tuple(policy.dose_units) + tuple(policy.volume_units)
    per_word, n_word, x_n, n_x, amount_x, amount = _site_patterns(policy.per_site_words, policy.site_count_words, units)
    per_site = bool(words and (per_word.search(words) or n_x.search(words) or amount_x.search(words)))
    counts = []
    if per_site:
        for rx in (n_word, x_n, n_x):
            counts += [int(m.group(1)) for m in rx.finditer(words)]
        counts += [int(m.group(3)) for m in amount_x.finditer(words)]
        counts = [c for c in counts if 1 <= c <= MAX_SITES]
    n = max(counts + ([timing] if timing else []), default=None)
    if n is None:
        return 1, "", per_site
    # "30 mL (5 mL per site x 6 sites)": the ordered amount is already the total
    for m in amount.finditer(words):
        mass, volume = _unit_factor(policy.dose_units, m.group(2)), _unit_factor(policy.volume_units, m.group(2))
        stated = float(m.group(1))
        for ordered, factor in ((line.mg, mass), (line.ml, volume)):
            if ordered is not None and factor is not None and stated * factor > 0 and n > 1 and (
                    abs(stated * factor * n - ordered) < 1e-6 and abs(stated * factor - ordered) > 1e-6):
                return 1, "", False
    if n == 1:
        return 1, "", False
    why = []
    if counts and max(counts) == n:
        why.append(f"per site, {n} sites in its text '{words[:80]}'")
    if timing == n:
        why.append(f"timing.repeat.count {n}")
    return n, " and ".join(why), False


def ordered_dose(request: dict, policy: RecordPolicy) -> Dose:
    """The dose of a MedicationRequest: the sum over its dosageInstructions (each a separate
    administration) of each one's amount (DoseLine: the largest of its doseAndRate entries, a doseRange
    read at its high end) times the number of times it is given (_site_multiplier: its timing count, or
    the sites a per-site dose's words state). A per-site dose whose number of sites is not stated counts
    one site and is named in `unread` (its total is not known)."""
    dosages = request.get("dosageInstruction")
    texts, lines, unread, unknown_units = [], [], [], []
    for di in (dosages if isinstance(dosages, list) else ())[:MAX_DOSAGES]:
        if not isinstance(di, dict):
            continue
        di_text = di["text"].strip()[:120] if isinstance(di.get("text"), str) and di["text"].strip() else ""
        if di_text:
            texts.append(di_text)
        mg = ml = None
        mg_text = ml_text = unknown = ""
        rates = di.get("doseAndRate")
        for dr in (rates if isinstance(rates, list) else ())[:MAX_DOSAGES]:
            q = _quantity(dr)
            if q is None:
                continue
            # every unit the quantity is written in (its UCUM or mapped code, its unit text): a code and a
            # text that disagree (mg and mL) give both, and the larger dose counts (agent_doses)
            units = quantity_units(q, policy)
            shown = q.get("unit") if isinstance(q.get("unit"), str) and q["unit"].strip() else (
                units[0] if units else (f"{str(q.get('system') or '').rsplit('/', 1)[-1]} {q.get('code') or ''}".strip()))
            text = f"{q['value']:g} {shown}".strip()
            read = False
            for unit in units:
                mass = _unit_factor(policy.dose_units, unit)
                volume = _unit_factor(policy.volume_units, unit) if mass is None else None
                if mass is not None:
                    read = True
                    value = round(float(q["value"]) * mass, 3)
                    if mg is None or value > mg:
                        mg, mg_text = value, text
                elif volume is not None:
                    read = True
                    value = float(q["value"]) * volume
                    if ml is None or value > ml:
                        ml, ml_text = value, text
            if not read and not unknown:
                unknown = text
        if mg is not None or ml is not None:
            line = DoseLine(mg, ml, mg_text, ml_text)
            n, why, per_site = _site_multiplier(di, line, policy)
            if n > 1:
                line = DoseLine(round(mg * n, 3) if mg is not None else None, round(ml * n, 6) if ml is not None else None,
                                f"{mg_text} x {n} ({why})" if mg_text else "", f"{ml_text} x {n} ({why})" if ml_text else "")
            elif per_site:
                unread.append(f"{line.text} per site: the dose is per site and the number of sites is not stated, "
                              f"so only one site's {line.text} was counted")
                line = DoseLine(mg, ml, f"{mg_text} for one site" if mg_text else "", f"{ml_text} for one site" if ml_text else "")
            lines.append(line)
        elif unknown or di_text:
            unread.append(unknown or di_text)
            if unknown:
                unknown_units.append(unknown)
    if not lines:
        return Dose(text=unknown_units[0] if unknown_units else "; ".join(texts)[:160])
    masses = [ln.mg for ln in lines if ln.mg is not None]
    volumes = [ln.ml for ln in lines if ln.ml is not None]
    return Dose(mg=round(sum(masses), 3) if masses else None, ml=round(sum(volumes), 6) if volumes else None,
                text=" + ".join([ln.text for ln in lines])[:160], lines=tuple(lines), unread=tuple(unread))


def agents_of(vs, policy: RecordPolicy) -> list[AgentLimit]:
    """The limited anesthetics (records.yaml anesthetic_limits.agents) a product contains."""
    limits = policy.anesthetic_limits
    return [a for a in limits.agents if a.valueset in vs] if limits else []


def is_anesthetic(vs, policy: RecordPolicy) -> bool:
    limits = policy.anesthetic_limits
    return bool(limits and set(limits.anesthetic_valuesets) & set(vs))


@dataclass(frozen=True)
class AgentDose:
    """One anesthetic in one draft order: mg when known, and how it was worked out."""

    agent: AgentLimit | None     # None: an anesthetic with no maximum in the policy
    name: str                    # the order's medication name
    ref: str
    with_vasoconstrictor: bool
    mg: float | None
    how: str                     # "10 mL x 10 mg/mL (strength in its name)", "50 mg", or why unknown


def agent_doses(product: Product, dose: Dose, ref: str, term, policy: RecordPolicy) -> list[AgentDose]:
    """Each anesthetic's mg in one draft order (empty when the product holds no anesthetic)."""
    if not is_anesthetic(product.vs, policy):
        return []
    limits = policy.anesthetic_limits
    vaso = limits.vasoconstrictor_valueset in product.vs
    agents = agents_of(product.vs, policy)
    if not agents:
        return [AgentDose(None, product.name, ref, vaso, None, dose.text)]
    other_sets = {limits.vasoconstrictor_valueset} | (set(policy.injectate_valuesets) - set(limits.anesthetic_valuesets))
    mix = mixture(product, agents, term, policy) if any(ln.ml is not None for ln in dose.each()) else None
    out = []
    for a in agents:
        others = (product.vs & other_sets) | {b.valueset for b in agents if b is not a}
        out += _agent_dose(a, product, dose, ref, vaso, len(agents) == 1, others, term, policy, mix)
    return out


def _mixture_strength(a: AgentLimit, product: Product, others: set[str], mix: Mixture, term,
                      policy: RecordPolicy) -> tuple[float | None, str, str]:
    """(mg/mL in the final product, how found, why unknown) of one anesthetic of a product with several
    (see `mixture`): its Medication.ingredient strength as it is; in a final-concentration name, the
    strength next to it; in a mixture of stock solutions, its stock strength x its share of the volume by
    the stated ratio, else unknown."""
    conc, found = agent_strength(replace(product, texts=()), a.valueset, others, term, policy)
    if conc is not None:  # a Medication.ingredient strength: per mL of the final product
        return conc, found, ""
    conc, found = agent_strength(replace(product, texts=mix.texts), a.valueset, others, term, policy)
    if mix.kind == "final" or conc is None:
        return conc, found, ""
    if mix.shares is None or a.valueset not in mix.shares:
        return None, "", f"a mixture of stock solutions whose mixing ratio is not stated, so the share of its {a.valueset} is unknown"
    share = mix.shares[a.valueset]
    return (round(conc * share, 6),
            f"{mix.ratio} mixture: {_fmt(100 * share)} % of the volume is {a.valueset} at {conc:g} mg/mL, stock strength in its name",
            "")


def _agent_dose(a: AgentLimit, product: Product, dose: Dose, ref: str, vaso: bool, only: bool, others: set[str],
                term, policy: RecordPolicy, mix: Mixture | None = None) -> list[AgentDose]:
    """One anesthetic's mg over every dosage line of an order: per line, a mass (when the product has
    this one anesthetic) or a volume x its strength, the larger when a line gives both. Lines with no
    usable amount are a second AgentDose with no mg (named as not counted beside the counted total).
    `mix`: how a product with several anesthetics is made up (`mixture`): a mixture of stock solutions
    counts each anesthetic's share of the volume, never the whole volume x each stock strength."""
    lines = dose.each()
    if not lines:
        return [AgentDose(a, product.name, ref, vaso, None, dose.text)]
    why = ""
    if not any(ln.ml is not None for ln in lines):
        conc, found = None, ""
    elif mix is not None:
        conc, found, why = _mixture_strength(a, product, others, mix, term, policy)
    else:
        conc, found = agent_strength(product, a.valueset, others, term, policy)
    total, pieces, kinds, missing = 0.0, [], set(), []
    for ln in lines:
        options = []
        if ln.mg is not None and only:
            # a mass ordered for a product with one anesthetic is that anesthetic's mass
            options.append((ln.mg, ln.mg_text, "mass"))
        if ln.ml is not None and conc is not None:
            options.append((round(ln.ml * conc, 3), ln.ml_text, "volume"))
        if options:
            mg, text, kind = max(options, key=lambda o: o[0])
            total += mg
            pieces.append(text)
            kinds.add(kind)
        elif ln.ml is not None:
            missing.append(f"{ln.ml_text}; " + (why or f"the strength of its {a.valueset} could not be determined"))
        else:
            missing.append(f"{ln.mg_text} of a product with several anesthetics")
    missing += list(dose.unread)
    out = []
    if pieces:
        if kinds == {"mass"}:
            how = " + ".join(pieces)
        elif kinds == {"volume"}:
            how = f"{' + '.join(pieces)} x {conc:g} mg/mL ({found})"
        else:
            how = f"{' + '.join(pieces)} (mL x {conc:g} mg/mL, {found})"
        out.append(AgentDose(a, product.name, ref, vaso, round(total, 3), how))
    if missing:
        out.append(AgentDose(a, product.name, ref, vaso, None, "; ".join(missing)[:200]))
    return out


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def dose_facts(doses: list[AgentDose], weight_kg: float | None, policy: RecordPolicy,
               age_years: int | None = None) -> tuple[list[dict], dict | None]:
    """Per anesthetic (and vasoconstrictor or not): the summed dose of every draft order against its
    maximum for this patient; and, when there are several, the sum of their fractions (additive toxicity).
    `age_years`: the patient's age, None when unknown. Without a weight the absolute (adult) maximum is
    the limit; a child's dose fact then says so (child: true), an unknown age too (age_unknown: true).

    Returns (dose fact fields, dose-total fact fields or None)."""
    limits = policy.anesthetic_limits
    child = (age_years is not None and limits.adult_min_age_years is not None
             and age_years < limits.adult_min_age_years)
    if weight_kg is not None:
        weight_kg = round(weight_kg, 1)  # the weight a card shows is the one computed with (51.98 kg: 52 x 7 = 364)
    groups: dict[tuple, list[AgentDose]] = {}
    for d in doses:
        key = (d.agent.valueset, d.with_vasoconstrictor) if d.agent else (None, d.name)
        groups.setdefault(key, []).append(d)
    facts, fractions = [], []
    for (vs_id, _), items in groups.items():
        first = items[0]
        known = [d for d in items if d.mg is not None]
        fields = dict(ref=first.ref, name=_group_name(first, limits), vs=[vs_id] if vs_id else [], text_only=[],
                      orders=sorted({d.ref for d in items}), total_mg=round(sum(d.mg for d in known), 3),
                      parts=[f"{d.name}: {d.how}" + (f" = {_fmt(d.mg)} mg" if d.mg is not None and d.how != f"{_fmt(d.mg)} mg" else "")
                             for d in items],
                      vasoconstrictor=first.with_vasoconstrictor, weight_window_days=limits.weight_max_age_days)
        # an anesthetic with no limit in the dose policy is named by its own note (limit_mg absent), with
        # what was ordered (parts): its amount is not "unusable"
        fields["undosed"] = [f"{d.name} ({d.how})" if d.how else d.name for d in items
                             if d.mg is None and first.agent is not None]
        fields["undosed_count"] = len(fields["undosed"])
        if first.agent is not None:
            per_kg, cap = (first.agent.with_vasoconstrictor if first.with_vasoconstrictor and first.agent.with_vasoconstrictor
                           else (first.agent.mg_per_kg, first.agent.max_mg))
            if weight_kg is not None:
                limit = min(per_kg * weight_kg, cap)
                fields["weight_kg"] = round(weight_kg, 1)
                fields["limit_text"] = (f"{_fmt(per_kg)} mg/kg x {_fmt(weight_kg)} kg = {_fmt(per_kg * weight_kg)} mg"
                                        + (f", capped at {_fmt(cap)} mg" if cap < per_kg * weight_kg else ""))
            else:
                limit = cap
                fields["limit_text"] = f"the absolute maximum of {_fmt(cap)} mg (no recent weight for {_fmt(per_kg)} mg/kg)"
                fields["mg_per_kg"] = per_kg
                if child:  # the adult cap is no maximum for a child: anesthetic-dose says it was not checked
                    fields["child"] = True
                    fields["age_years"] = age_years
                elif age_years is None:
                    fields["age_unknown"] = True
            fields["limit_mg"] = round(limit, 3)
            fields["fraction"] = round(fields["total_mg"] / limit, 4)
            if known:
                fractions.append((fields["name"], fields["total_mg"], limit, fields["limit_text"], fields["parts"]))
        facts.append(fields)
    total = None
    if len(fractions) >= 2:
        total = dict(ref=facts[0]["ref"], name="local anesthetics combined", vs=[], text_only=[],
                     classes=len(fractions), fraction=round(sum(mg / lim for _, mg, lim, _, _ in fractions), 4),
                     # each part with where its maximum comes from (weight x mg/kg, or the cap) and what was ordered
                     parts=[f"{n} {_fmt(mg)} mg = {round(100 * mg / lim)} % of its maximum, {how} (ordered: {'; '.join(ordered)})"
                            for n, mg, lim, how, ordered in fractions])
    return facts, total


def _group_name(d: AgentDose, limits) -> str:
    if d.agent is None:
        return d.name
    return d.agent.valueset + (" with " + limits.vasoconstrictor_valueset if d.with_vasoconstrictor else "")


# -- the order the CLI synthesizes ------------------------------------------------------------------

@dataclass(frozen=True)
class Injectate:
    name: str
    value: float | None = None
    unit: str | None = None


def parse_injectates(spec: str) -> list[Injectate]:
    """'lidocaine:50mg,triamcinolone:40mg' -> Injectates; raises InputError naming the bad part."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, amount = part.rpartition(":")
        if not sep:
            out.append(Injectate(part))
            continue
        m = _DOSE_OPTION.match(amount)
        if not name.strip() or not m:
            raise InputError(f"cannot read '{part}' (expected NAME or NAME:DOSEUNIT, e.g. lidocaine:50mg)", "--injectate")
        out.append(Injectate(name.strip(), float(m.group(1)), m.group(2)))
    if not out:
        raise InputError("no medication given", "--injectate")
    return out


def tpi_procedure_code(term, policy: RecordPolicy, sites: int) -> tuple[str, str, str] | None:
    """(system, code, display) of the TPI procedure for this many muscle groups, from the first
    tpi_order_valueset: the concept whose display says "3 or more" when there are 3+, else the other."""
    vid = policy.tpi_order_valuesets[0]
    concepts = [(s, c, dsp) for s, c, dsp in getattr(term.defs[vid], "displays", ()) if s and c]
    if not concepts:
        return None
    many = [c for c in concepts if re.search(r"\b3 or more\b", c[2], re.IGNORECASE)]
    few = [c for c in concepts if c not in many]
    return (many or concepts)[0] if sites >= 3 else (few or concepts)[0]


def synthesize(injectates: list[Injectate], sites: list[str], patient_ref: str | None, term, policy: RecordPolicy,
               fhir_version: str = "R4") -> list[dict]:
    """Draft ServiceRequest (the TPI code of rules/valuesets) and one draft MedicationRequest per
    injectate, valid FHIR R4 or R5 (R5: code and medication are CodeableReferences)."""
    order_id = "cli-tpi-order"
    subject = {"reference": patient_ref} if patient_ref else {"display": "patient of this input"}
    concept = {"text": "Trigger point injection"}
    proc = tpi_procedure_code(term, policy, len(sites))
    if proc:
        concept["coding"] = [{"system": proc[0], "code": proc[1], **({"display": proc[2]} if proc[2] else {})}]
    sr = {"resourceType": "ServiceRequest", "id": order_id, "status": "draft", "intent": "order",
          "code": {"concept": concept} if fhir_version == "R5" else concept, "subject": subject}
    if sites:
        sr["bodySite"] = [{"text": s} for s in sites]
    out = [sr]
    for i, inj in enumerate(injectates, 1):
        found = term.find_concept(inj.name)
        med = {"text": inj.name}
        if found:
            med["coding"] = [{"system": found[0], "code": found[1], "display": found[2]}]
        mr = {"resourceType": "MedicationRequest", "id": f"cli-injectate-{i}", "status": "draft", "intent": "order",
              "subject": subject, "basedOn": [{"reference": f"ServiceRequest/{order_id}"}]}
        if fhir_version == "R5":
            mr["medication"] = {"concept": med}
        else:
            mr["medicationCodeableConcept"] = med
        if inj.value is not None:
            mr["dosageInstruction"] = [{"doseAndRate": [{"doseQuantity": {
                "value": inj.value, "unit": inj.unit, "system": UCUM, "code": inj.unit}}]}]
        out.append(mr)
    return out


__all__ = ["is_tpi", "is_tpi_order", "unrecognised_injection_orders", "injectates_of_absent_orders", "injectates_for_tpi", "Product", "Dose", "ordered_dose", "quantity_units", "agent_strength", "agent_doses", "dose_facts",
           "strengths_in", "components", "mixture", "Mixture", "Injectate", "parse_injectates", "synthesize", "appointment_as_orders"]
