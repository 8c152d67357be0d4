"""cds-tpi: checks a planned trigger point injection against FHIR data and answers with CDS Hooks cards."""

__version__ = "0.1.0"
