"""The mine stage's table of mined clips, which ``soundops mine accept`` reads. (Mined
clips, not "candidates": ``candidate`` is the registry alias of a version.)"""

MINED = "mined.csv"
