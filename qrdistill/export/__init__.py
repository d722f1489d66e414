"""Exports of a finished run for other tools: the reasoning data as a dataset, merged students, GGUF files."""
