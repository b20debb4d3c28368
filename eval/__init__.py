"""M-BEIR and M2KR evaluation: `evaluate_mbeir`, `evaluate_m2kr` and their commands.

Installed as `ret2.eval` (commands `ret2-eval-mbeir`, `ret2-eval-m2kr`); from a checkout, `python -m eval.mbeir` and
`python -m eval.m2kr` run the same code.
"""
