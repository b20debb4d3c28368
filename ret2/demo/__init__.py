"""The main job: `ret2-demo` or `python -m ret2.demo` (see README)."""
