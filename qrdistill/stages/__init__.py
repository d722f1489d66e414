"""Pipeline stages: one module each, a pure `run` function plus the CLI in qrdistill.cli."""
