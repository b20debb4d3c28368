"""The main job: `python -m demo` (see README)."""
