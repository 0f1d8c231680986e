"""The synthetic demo corpus: the embedded default source, ingested like any other."""
