"""The wake word's corpus from text: the default source, ingested like any other."""
