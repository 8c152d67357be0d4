"""FHIR JSON in: reading documents, validating resources, resolving references."""
