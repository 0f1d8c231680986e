"""Text resources bundled with the package (word list, sentence corpus)."""
