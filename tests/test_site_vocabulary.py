"""Injection-site vocabulary (issue 7, class 3): EHR site strings and SNOMED CT body-structure codes map to
the expected body regions (a shared region = "near" an infection) and to thoracic-sites (pneumothorax note).

Every expected set below is EXACT: an extra region is a false "near" (a critical local-infection card where
the sites are distant), a missing one a missed infection. The decisions and sources are in
rules/valuesets/README.md, "Body sites".
"""

from __future__ import annotations

import re

import pytest

from cds_tpi.ruleset.load import load_rulebook

from .conftest import RULES

SCT = "http://snomed.info/sct"
HN, UB, CH, LB = "region-head-neck", "region-upper-back-shoulder", "region-chest", "region-lower-back"
BH, UL, LL, AB = "region-buttock-hip", "region-upper-limb", "region-lower-limb", "region-abdomen"
REGIONS = {HN, UB, CH, LB, BH, UL, LL, AB}
THORACIC = "thoracic-sites"


@pytest.fixture(scope="module")
def term():
    return load_rulebook(RULES).terminology


def _where(membership) -> tuple[set[str], bool]:
    ids = set(membership.all)
    return ids & REGIONS, THORACIC in ids


# (site text as EHRs send it, expected regions, thoracic?)
TEXTS = [
    # trapezius: neck and upper back, over the thorax; laterality and part words do not stop the match
    ("Left trapezius", {HN, UB}, True),
    ("R upper trapezius", {HN, UB}, True),
    ("lower trapezius", {HN, UB}, True),
    ("Right trapezius muscle", {HN, UB}, True),
    ("bilateral upper traps", {HN, UB}, True),
    ("L trap", {HN, UB}, True),
    ("Left levator scapulae muscle", {HN, UB}, True),
    ("levator scap, right", {HN, UB}, True),
    ("Right rhomboid major muscle", {UB}, True),
    ("rhomboids bilateral", {UB}, True),
    ("Right latissimus dorsi", {UB, LB, CH}, True),
    ("L lats", {UB, LB, CH}, True),
    ("anterior scalene, left", {HN}, True),
    ("scalenes", {HN}, True),
    ("Right infraspinatus", {UB}, True),
    ("teres minor", {UB}, True),
    ("supraspinatus muscle left", {UB}, True),
    ("rotator cuff", {UB}, True),
    ("Left pectoralis minor", {CH}, True),
    ("R pec major", {CH}, True),
    ("serratus anterior", {CH}, True),
    ("serratus posterior inferior", {UB, LB, CH}, True),  # bare "serratus" (usually anterior) is CH
    ("serratus", {CH}, True),
    ("infrascapular R", {UB}, True),
    ("Left parascapular", {UB}, True),  # audit 8: beside the scapula, over the posterior ribs
    ("T-spine paraspinals", {UB}, True),
    ("C7-T1 paraspinal", {HN, UB}, True),
    ("L infraclavicular", {CH}, True),
    ("Pectoral region", {CH}, True),
    ("shoulder blade, medial border", {UB}, True),
    ("supraspinous fossa", {UB}, True),
    ("costal margin", {CH}, True),
    ("left 6th intercostal space", {CH}, True),
    ("thoracic paraspinals T6-T8", {UB}, True),
    ("paraspinal muscles at T4", {UB}, True),
    ("longissimus thoracis", {UB}, True),
    ("mid back", {UB, LB}, True),  # "back" is in both back regions by design
    # not over the thorax
    ("bilateral paraspinals L4-L5", {LB}, False),
    ("lumbar paraspinal", {LB}, False),
    ("Left lumbar paraspinals", {LB}, False),
    ("Left quadratus lumborum muscle", {LB}, False),
    ("R QL", {LB}, False),
    # audit-3 s13 and site forms: plural and short forms, junction words (as the level words they abbreviate)
    ("R QLs", {LB}, False), ("L gluts", {BH}, False), ("L levator", {HN, UB}, True), ("levator ani", set(), False),
    ("CT junction", {HN, UB}, True), ("C-T junction", {HN, UB}, True), ("T-L junction", {UB, LB}, True),
    ("LS junction", {LB, BH}, False), ("costovertebral", {UB, LB}, True),
    ("iliocostalis thoracis", {UB}, True), ("longissimus thoracis", {UB}, True), ("T8 rotatores", {UB}, True),
    ("L4 rotatores", {LB}, False),
    ("iliocostalis lumborum", {LB}, False),
    ("lower back", {LB, UB}, False),  # unchanged: "back" sits in both back regions
    ("cervical paraspinals", {HN}, False),
    ("C5-C6 paraspinal", {HN}, False),
    ("Right sternocleidomastoid", {HN}, False),
    ("SCM", {HN}, False),
    ("splenius capitis", {HN}, False),
    ("suboccipitals", {HN}, False),
    ("Left masseter", {HN}, False),
    ("temporalis", {HN}, False),
    ("Right gluteus medius muscle", {BH}, False),
    ("glute med", {BH}, False),
    ("gluteus maximus, left", {BH}, False),
    ("gluteus minimus", {BH}, False),
    ("Right piriformis muscle", {BH}, False),
    ("Right greater trochanter", {BH}, False),
    ("R SI joint", {BH}, False),
    ("L-spine paraspinals", {LB}, False),
    ("C-spine paraspinals", {HN}, False),
    ("Left occipital", {HN}, False),
    ("Temporal region", {HN}, False),
    ("glut med L", {BH}, False),
    ("plantar fascia", {LL}, False),
    ("TFL", {BH, LL}, False),
    ("tensor fasciae latae", {BH, LL}, False),
    ("iliopsoas", {LB, BH, AB}, False),
    ("Left deltoid", {UL, UB}, False),
    ("hamstrings", {LL}, False),
    ("R quads", {LL}, False),
    ("gastroc", {LL}, False),
    ("rectus abdominis", {AB}, False),
    ("obliques", {AB}, False),
    # a longer phrase masks a shorter pattern of another region (text-exclude): the muscle is where it is
    ("R pronator teres", {UL}, False),  # forearm, not "teres" of the shoulder
    ("Left biceps femoris", {LL}, False),  # thigh, not "biceps" of the arm
    ("biceps femoris, long head", {LL}, False),  # "long head" is not the head
    ("Right triceps long head", {UL}, False),
    ("deltoid ligament", {LL}, False),  # the ankle
    ("humeral head", {UB}, False),
    ("femoral neck", {BH}, False),  # "neck" of the femur, not the neck
    ("back of left thigh", {LL}, False),  # "back of" a limb is not the back
    ("back of trunk", {UB, LB}, False),
]

# Named without a level: the region cannot be told from the text (sites not comparable; thoracic undecided).
NO_REGION = ["paraspinals", "bilateral paraspinal muscles", "multifidus", "dry needling site",
             "rotatores", "iliocostalis", "longissimus", "L lat"]  # "lat" is also "lateral": no pattern


@pytest.mark.parametrize("text,regions,thoracic", TEXTS, ids=[t[0] for t in TEXTS])
def test_site_text(term, text, regions, thoracic):
    got_regions, got_thoracic = _where(term.match([], [text]))
    assert got_regions == regions, text
    assert got_thoracic is thoracic, text


@pytest.mark.parametrize("text", NO_REGION)
def test_site_text_without_level_has_no_region(term, text):
    got_regions, got_thoracic = _where(term.match([], [text]))
    assert got_regions == set() and not got_thoracic, text


# SNOMED CT body-structure codes sent without a display: (code, expected regions, thoracic?)
CODES = [
    ("31764008", {HN, UB}, True),  # trapezius
    ("15665001", {UB, LB, CH}, True),  # latissimus dorsi
    ("50755001", {HN}, True),  # scalenus anterior
    ("22823000", {HN}, False),  # sternocleidomastoid
    ("79368004", {HN}, False),  # masseter
    ("52927003", {HN}, False),  # temporalis
    ("81727001", {HN}, False),  # skeletal muscle of neck
    ("4583008", {HN, UB}, False),  # splenius muscle of trunk
    ("72573008", {UB}, True),  # infraspinatus
    ("6423006", {UB}, True),  # supraspinatus
    ("90588001", {UB}, True),  # subscapularis
    ("1193009", {UB}, True),  # teres major
    ("51159009", {UB}, True),  # teres minor
    ("7885001", {UB}, True),  # rotator cuff
    ("719631004", {UB}, True),  # body of left scapula
    ("719632006", {UB}, True),  # body of right scapula
    ("424072006", {UB}, True),  # thoracic paraspinous muscle group
    ("304037003", {UB}, True),  # back of thoracic region
    ("73930003", {UB}, True),  # levatores costarum
    ("60005003", {CH}, True),  # pectoralis major
    ("18686000", {CH}, True),  # pectoralis minor
    ("18346003", {CH}, True),  # serratus anterior
    ("53967007", {CH}, True),  # external intercostal
    ("41313007", {CH}, True),  # internal intercostal
    ("117137004", {CH}, True),  # fifth intercostal space
    ("372074006", {CH}, True),  # chest wall muscle
    ("44947003", {UB, LB}, False),  # erector spinae: level not given
    ("57651003", {UB, LB}, False),  # iliocostalis
    ("88340001", {UB, LB}, False),  # longissimus
    ("244849004", {UB, LB}, False),  # deep muscle of back
    ("48144002", {LB}, False),  # muscle of lower back
    ("1017210004", {LB}, False),  # left lumbar region of back
    ("1017211000", {LB}, False),  # right lumbar region of back
    ("68455001", {LB, BH, AB}, False),  # iliopsoas
    ("206007", {BH}, False),  # gluteus maximus
    ("181674001", {BH}, False),  # gluteus maximus (entire)
    ("78333006", {BH}, False),  # gluteus medius
    ("75297007", {BH}, False),  # gluteus minimus
    ("35259002", {UL, UB}, False),  # deltoid
    ("16217701000119102", {UL, UB}, False),  # left deltoid
    ("16217661000119109", {UL, UB}, False),  # right deltoid
    ("1403006", {LL}, False),  # vastus lateralis
    ("1217007000", {LL}, False),  # left vastus lateralis
    ("1217006009", {LL}, False),  # right vastus lateralis
    ("128511007", {LL}, False),  # posterior muscle of thigh (hamstrings)
    ("1142228004", {AB}, False),  # abdominal wall muscle
]


@pytest.mark.parametrize("code,regions,thoracic", CODES, ids=[c[0] for c in CODES])
def test_site_code_without_display(term, code, regions, thoracic):
    got_regions, got_thoracic = _where(term.match([(SCT, code)], []))
    assert got_regions == regions, code
    assert got_thoracic is thoracic, code


@pytest.mark.parametrize("code,regions,thoracic", CODES, ids=[c[0] for c in CODES])
def test_site_code_with_laterality_text(term, code, regions, thoracic):
    """Code plus a laterality-only text ("Left"): the code decides, the text adds nothing."""
    got_regions, got_thoracic = _where(term.match([(SCT, code)], ["Left"]))
    assert got_regions == regions and got_thoracic is thoracic, code


def test_every_site_code_has_a_source_in_the_readme(term):
    """Each SNOMED CT code of a region set or thoracic-sites is listed in valuesets/README.md, 'Body sites'."""
    readme = (RULES / "valuesets" / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Body sites", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\b\d{6,18}\b", section))
    codes = {c for vid in REGIONS | {THORACIC} for (s, c) in term.codes_of(vid) if s == SCT}
    assert not sorted(codes - listed), "codes without a source in README 'Body sites'"


def test_negatives_are_not_thoracic(term):
    for text in ["lumbar paraspinal", "gluteus medius", "quadratus lumborum", "lower back", "cervical paraspinals",
                 "Left deltoid", "sternocleidomastoid", "piriformis", "iliopsoas"]:
        assert THORACIC not in term.match([], [text]).all, text


def test_site_code_read_with_its_display_keeps_its_meaning(term):
    """A code-only site is also read with the display the value sets give it (facts: display_of). That text
    never changes the thoracic decision, and adds at most the other back region (the word "back" is near
    either back region by design)."""
    displays = {}
    for d in term.defs.values():
        for system, code, display in getattr(d, "displays", ()):
            if system == SCT and display:
                displays.setdefault(code, display)
    codes = {c for vid in REGIONS | {THORACIC} for (s, c) in term.codes_of(vid) if s == SCT}
    for code in sorted(codes):
        alone = _where(term.match([(SCT, code)], []))
        read = _where(term.match([(SCT, code)], [displays[code]]))
        assert read[1] is alone[1], (code, displays[code])
        assert read[0] >= alone[0] and read[0] - alone[0] <= {UB, LB}, (code, displays[code], read[0] - alone[0])


# ICD-10-CM cellulitis / abscess codes sent without a display: the region their title names.
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
ICD_CODES = [
    ("L03.312", {UB, LB}), ("L02.212", {UB, LB}), ("L02.217", {LB}), ("L03.221", {HN}), ("L02.11", {HN}),
    ("L03.313", {CH}), ("L03.111", {CH}), ("L03.113", {UL}), ("L03.116", {LL}), ("L03.317", {BH}),
    ("L02.31", {BH}), ("L03.311", {AB}), ("L03.314", {AB}),
    ("L03.322", {UB, LB}), ("L02.222", {UB, LB}), ("L02.32", {BH}), ("L03.811", {HN}), ("L03.032", {LL}),  # audit 7
    ("L08.9", set()), ("T81.41XA", set()),
    ("L03.319", set()), ("L03.90", set()), ("L03.315", set()), ("L02.419", set()),  # trunk/limb/site unspecified
    # furuncle and carbuncle of a limb (L02.42-, L02.43-) and of the trunk: like the abscess codes of the same site
    ("L02.423", {UL}), ("L02.424", {UL}), ("L02.433", {UL}), ("L02.434", {UL}),
    ("L02.425", {LL}), ("L02.426", {LL}), ("L02.435", {LL}), ("L02.436", {LL}),
    ("L02.429", set()), ("L02.439", set()), ("L02.229", set()), ("L02.239", set()),
    ("L02.223", {CH}), ("L02.233", {CH}), ("L02.234", {AB}),
    # audit 8: head (except face) and other-site abscess/furuncle/carbuncle, periorbital cellulitis, perineum/umbilicus
    ("L02.811", {HN}), ("L02.821", {HN}), ("L02.831", {HN}), ("L03.213", {HN}),
    ("L02.818", set()), ("L02.828", set()), ("L02.838", set()),
    ("L02.225", set()), ("L02.235", set()), ("L02.226", {AB}), ("L02.236", {AB}),
    # active herpes zoster: the eye codes are the head; the others say nothing of where (body site or text decides)
    ("B02.9", set()), ("B02.8", set()), ("B02.7", set()), ("B02.30", {HN}), ("B02.31", {HN}), ("B02.39", {HN}),
    # audit 3: erysipelas, impetigo, MRSA/MSSA of unspecified site (no region); pilonidal abscess (sacrococcygeal)
    ("A46", set()), ("L01.00", set()), ("L01.01", set()), ("L01.03", set()), ("L01.09", set()), ("L01.1", set()),
    ("A49.01", set()), ("A49.02", set()), ("L05.01", {BH}), ("L05.02", {BH}),
    # deep infections: the 5th character of M46.2-M46.5 is the spinal level (0 unspecified, 9 multiple: no region)
    ("M46.20", set()), ("M46.21", {HN}), ("M46.22", {HN}), ("M46.23", {HN, UB}), ("M46.24", {UB}),
    ("M46.25", {UB, LB}), ("M46.26", {LB}), ("M46.27", {LB, BH}), ("M46.28", {BH}),
    ("M46.34", {UB}), ("M46.36", {LB}), ("M46.39", set()), ("M46.42", {HN}), ("M46.46", {LB}), ("M46.48", {BH}),
    ("M46.49", set()), ("M46.54", {UB}), ("M46.57", {LB, BH}),
    ("M60.011", {UB}), ("M60.012", {UB}), ("M60.019", {UB}), ("M60.021", {UL}), ("M60.041", {UL}),
    ("M60.000", {UL}), ("M60.051", {LL}), ("M60.062", {LL}), ("M60.078", {LL}), ("M60.005", {LL}),
    ("M60.009", set()), ("M60.08", set()), ("M60.09", set()), ("G06.1", set()),
]


@pytest.mark.parametrize("code", ["L05.91", "L05.92", "A49.1", "Z86.19", "M46.00", "M60.10", "G06.0"])
def test_infection_codes_left_out(term, code):
    """Pilonidal cyst / sinus without abscess, streptococcal infection of unspecified site, a history code, spinal
    enthesopathy, interstitial myositis and intracranial abscess are not local infections of an injection site."""
    assert "skin-soft-tissue-infections" not in set(term.match([(ICD, code)], []).all), code


@pytest.mark.parametrize("code", [c for c, _ in ICD_CODES])
def test_infection_icd_code_is_a_skin_infection(term, code):
    """Every code of the table is a skin/soft-tissue infection of its own (no display, no text needed)."""
    assert "skin-soft-tissue-infections" in set(term.match([(ICD, code)], []).all), code


@pytest.mark.parametrize("code", ["B02.0", "B02.1", "B02.21", "B02.22", "B02.23", "B02.29"])
def test_zoster_codes_left_out(term, code):
    """Zoster encephalitis/meningitis (not a skin site) and postherpetic involvement (after the rash) are not
    local skin infections: a postherpetic neuralgia is a reason for injections, not against them."""
    assert "skin-soft-tissue-infections" not in set(term.match([(ICD, code)], []).all), code


@pytest.mark.parametrize("code,shoulder,hip", [
    ("L02.423", True, False), ("L02.424", True, False), ("L02.433", True, False), ("L02.434", True, False),
    ("L02.425", False, True), ("L02.426", False, True), ("L02.435", False, True), ("L02.436", False, True),
    ("L02.429", True, True), ("L02.439", True, True),
])
def test_limb_furuncle_and_carbuncle_codes_reach_the_whole_limb(term, code, shoulder, hip):
    """The whole-limb sets (a limb code may be at the shoulder or hip: warning) hold the furuncle and carbuncle
    codes as they hold the abscess codes (L02.413/.414/.419, L02.415/.416/.419)."""
    got = set(term.match([(ICD, code)], []).all)
    assert "skin-soft-tissue-infections" in got
    assert ("infection-limb-incl-shoulder" in got) is shoulder and ("infection-limb-incl-hip" in got) is hip


@pytest.mark.parametrize("code,regions", ICD_CODES, ids=[c[0] for c in ICD_CODES])
def test_infection_icd_code_without_display(term, code, regions):
    got_regions, got_thoracic = _where(term.match([(ICD, code)], []))
    assert got_regions == regions and not got_thoracic, code


# Border pairs (local-infection warning "may be near"): an infection named in infection-buttock / infection-axilla
# with a site in sites-near-buttock / sites-near-axilla. EXACT: a site listed here as far must stay without a card.
NEAR_BUTTOCK, NEAR_AXILLA, NEAR_LUMBAR = "sites-near-buttock", "sites-near-axilla", "sites-near-lumbar"
INF_BUTTOCK, INF_AXILLA, INF_LUMBAR = "infection-buttock", "infection-axilla", "infection-lumbar"
NEAR = {NEAR_BUTTOCK, NEAR_AXILLA, NEAR_LUMBAR}
INF = {INF_BUTTOCK, INF_AXILLA, INF_LUMBAR}

NEAR_TEXTS = [
    ("Left quadratus lumborum muscle", {NEAR_BUTTOCK}),  # arises from the iliac crest
    ("R QL", {NEAR_BUTTOCK}),
    ("lumbar paraspinal", {NEAR_BUTTOCK}),
    ("Left lumbar paraspinals", {NEAR_BUTTOCK}),
    ("bilateral paraspinals L4-L5", {NEAR_BUTTOCK}),
    ("L-spine paraspinals", {NEAR_BUTTOCK}),
    ("iliocostalis lumborum", {NEAR_BUTTOCK}),
    ("lower back", {NEAR_BUTTOCK}),
    ("Right teres major", {NEAR_AXILLA}),  # posterior axillary fold
    ("teres minor", {NEAR_AXILLA}),  # upper border of the quadrangular space
    ("Left subscapularis", {NEAR_AXILLA}),  # posterior wall of the axilla
    ("Right gluteus medius muscle", {NEAR_LUMBAR}),  # just below the iliac crest (the reverse pair)
    ("gluteus maximus, left", {NEAR_LUMBAR}),  # posterior iliac crest and sacrum
    ("glute med", {NEAR_LUMBAR}),
    ("L gluteal TP", {NEAR_LUMBAR}),
    ("R SI joint", {NEAR_LUMBAR}),
    ("sacral", {NEAR_LUMBAR}),
    # far from both borders, or already the same region as the infection (critical, not "near")
    ("Left trapezius", set()),
    ("upper back", set()),
    ("mid back", set()),
    ("thoracolumbar", set()),
    ("Right latissimus dorsi", set()),  # region-chest like the axilla codes: same region
    ("R pec major", set()),
    ("serratus anterior", set()),
    ("Right infraspinatus", set()),
    ("rotator cuff", set()),
    ("Left deltoid", set()),
    ("pronator teres", set()),  # forearm: bare "teres" is not a pattern
    ("lumbosacral", set()),  # region-buttock-hip and region-lower-back both: the same region
    ("iliac crest", set()),
    ("gluteus minimus", set()),  # deep, lower than the crest
    ("glute min R", set()),
    ("left gluteal fold", set()),  # the buttock's lower border
    ("Right piriformis muscle", set()),  # mid-buttock
    ("TFL", set()),
    ("Right greater trochanter", set()),
    ("coccyx", set()),
    ("paraspinals", set()),  # no level
    ("C5-C6 paraspinal", set()),
    ("thoracic paraspinals T6-T8", set()),
]


@pytest.mark.parametrize("text,near", NEAR_TEXTS, ids=[t[0] for t in NEAR_TEXTS])
def test_site_text_near_a_border(term, text, near):
    assert set(term.match([], [text]).all) & NEAR == near, text


NEAR_CODES = [
    ("52612000", {NEAR_BUTTOCK}), ("122496007", {NEAR_BUTTOCK}), ("48144002", {NEAR_BUTTOCK}),
    ("37822005", {NEAR_BUTTOCK}), ("113182001", {NEAR_BUTTOCK}), ("736312007", {NEAR_BUTTOCK}),
    ("1017210004", {NEAR_BUTTOCK}), ("1017211000", {NEAR_BUTTOCK}),
    ("1193009", {NEAR_AXILLA}), ("51159009", {NEAR_AXILLA}), ("90588001", {NEAR_AXILLA}),
    ("206007", {NEAR_LUMBAR}), ("181674001", {NEAR_LUMBAR}), ("78333006", {NEAR_LUMBAR}), ("46862004", {NEAR_LUMBAR}),
    ("22180002", {NEAR_LUMBAR}), ("95941007", {NEAR_LUMBAR}), ("54735007", {NEAR_LUMBAR}), ("39723000", {NEAR_LUMBAR}),
    ("75297007", set()), ("736324000", set()), ("29836001", set()),  # gluteus minimus; sacral soft tissue (also LB); hip
    ("77568009", set()), ("1217256009", set()), ("44947003", set()), ("15665001", set()),  # back, thoracolumbar, erector spinae, latissimus
    ("1217253001", set()), ("31764008", set()), ("72573008", set()), ("7885001", set()), ("60005003", set()),
]


@pytest.mark.parametrize("code,near", NEAR_CODES, ids=[c[0] for c in NEAR_CODES])
def test_site_code_near_a_border(term, code, near):
    assert set(term.match([(SCT, code)], []).all) & NEAR == near, code


def test_near_sets_are_not_the_infections_own_region(term):
    """A near site is never in the region of its infection set's codes: that pair is critical (same region), and a
    second, weaker 'may be near' note on the same card would only confuse."""
    for near, region in ((NEAR_BUTTOCK, BH), (NEAR_AXILLA, CH), (NEAR_LUMBAR, LB)):
        for system, code in term.codes_of(near):
            assert region not in term.match([(system, code)], []).all, (near, code)
        for pattern in term.defs[near].texts:
            assert region not in term.match([], [pattern]).all, (near, pattern)


INF_CODES = [
    ("L03.317", {INF_BUTTOCK}, {BH}), ("L02.31", {INF_BUTTOCK}, {BH}), ("L02.32", {INF_BUTTOCK}, {BH}),
    ("L02.33", {INF_BUTTOCK}, {BH}),
    ("L03.111", {INF_AXILLA}, {CH}), ("L03.112", {INF_AXILLA}, {CH}), ("L02.411", {INF_AXILLA}, {CH}),
    ("L02.412", {INF_AXILLA}, {CH}), ("L02.421", {INF_AXILLA}, {CH}), ("L02.422", {INF_AXILLA}, {CH}),
    ("L02.431", {INF_AXILLA}, {CH}), ("L02.432", {INF_AXILLA}, {CH}),
    ("L03.313", set(), {CH}), ("L02.213", set(), {CH}),  # chest wall: not the axilla
    ("L03.119", set(), set()), ("L02.419", set(), set()),  # unspecified part of limb (whole-limb sets)
    ("L03.312", {INF_LUMBAR}, {UB, LB}), ("L02.212", {INF_LUMBAR}, {UB, LB}), ("L02.222", {INF_LUMBAR}, {UB, LB}),
    ("L02.232", {INF_LUMBAR}, {UB, LB}), ("L03.322", {INF_LUMBAR}, {UB, LB}), ("L02.217", {INF_LUMBAR}, {LB}),
    ("L02.416", set(), {LL}), ("L03.221", set(), {HN}),
    ("L05.01", {INF_BUTTOCK}, {BH}), ("L05.02", {INF_BUTTOCK}, {BH}),  # pilonidal abscess: sacrococcygeal
]


@pytest.mark.parametrize("code,sets,regions", INF_CODES, ids=[c[0] for c in INF_CODES])
def test_infection_code_of_a_border_area(term, code, sets, regions):
    got = set(term.match([(ICD, code)], []).all)
    assert got & INF == sets and got & REGIONS == regions, code
    assert "skin-soft-tissue-infections" in got, code


@pytest.mark.parametrize("text,sets", [
    ("Abscess of right buttock", {INF_BUTTOCK}), ("Gluteal cellulitis", {INF_BUTTOCK}),
    ("Left axillary abscess", {INF_AXILLA}), ("Cellulitis of armpit", {INF_AXILLA}),
    ("Cellulitis of back [any part except buttock]", {INF_LUMBAR}),  # the bracketed aside is dropped
    ("Abscess of lower back, right", {INF_LUMBAR}), ("Lumbar cellulitis", {INF_LUMBAR}), ("Flank abscess", {INF_LUMBAR}),
    ("Cellulitis of upper back", set()), ("Cellulitis of mid back", set()), ("Cellulitis, back of left hand", set()),
    ("Abscess back of neck", set()),
    ("Cellulitis of chest wall", set()), ("Cellulitis of left forearm", set()),
])
def test_infection_text_of_a_border_area(term, text, sets):
    assert set(term.match([], [text]).all) & INF == sets, text


@pytest.mark.parametrize("text", ["Cellulitis of armpit", "Left underarm abscess", "Axillary abscess, right"])
def test_axilla_words_are_chest_region(term, text):
    """Lay words for the axilla place the infection in region-chest (with the axilla codes), not 'unknown'."""
    assert _where(term.match([], [text]))[0] == {CH}, text
