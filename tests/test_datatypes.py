"""FHIR datatype helpers (cds_tpi/fhir/datatypes.py)."""

from cds_tpi.fhir.datatypes import codeable, display


def test_a_concepts_own_text_comes_before_its_codings_displays():
    """A card names a record by what the clinician entered or saw (CodeableConcept.text), not the
    code's display: 'Cellulitis of left buttock' keeps the side that 'Cellulitis of buttock' drops."""
    cc = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "L03.317", "display": "Cellulitis of buttock"}],
          "text": "Cellulitis of left buttock"}
    codes, texts = codeable(cc)
    assert codes == [("http://hl7.org/fhir/sid/icd-10-cm", "L03.317")]
    assert texts == ["Cellulitis of left buttock", "Cellulitis of buttock"]
    assert display(cc) == "Cellulitis of left buttock"
    assert codeable({"concept": cc}) == (codes, texts)  # R5 CodeableReference
    assert codeable({"coding": [{"display": "x"}]}) == ([], ["x"]) and codeable(None) == ([], [])
