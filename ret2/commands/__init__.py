"""The command layer: one module per installed command (`ret2-<name>` runs `ret2.commands.<name>:main`), each
holding its parser, its printing and the call into the library; `flags` defines the flag groups several commands
share, `_common` the conventions every command follows (dashed or underscored flags, defaults in `--help`, one-line
errors).

A command module imports only light modules at its top (the standard library, `ret2.options`, its flags), so
`--help` loads neither torch nor transformers; the library is imported in `main` after parsing. No library module
imports this package.
"""
