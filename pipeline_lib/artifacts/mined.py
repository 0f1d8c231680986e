"""The mine stage's table of mined clips, which ``soundops mine accept`` reads."""

CANDIDATES = "candidates.csv"
