"""Converters from other checkpoint formats to ReT-2 folders.

`conversion.ret1`: the published ReT-1 checkpoints (`aimagelab/ReT-*`) -> a `ret1`-mode ReT-2 folder with remote code
and processor. Import from the submodule (`from conversion.ret1 import convert_ret1`); this package imports nothing so
that `python -m conversion.ret1` runs the module once.
"""
