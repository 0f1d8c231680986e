"""Audio in: file I/O, front ends (log-mel, speech embedding) and the data sources."""
