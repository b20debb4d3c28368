"""Benchmarks of ReT-2.

`python -m ret2.bench` measures speed and memory on random-weight models (speed does not depend on the weights' values):
encoding against the backbone floor and against the ReT-1 reference code, index size and exact search, training
steps; it prints markdown tables and writes a JSON report (`python -m ret2.bench --help`; results in docs/benchmarks.md).
`python -m ret2.bench.profile` shows where an encode call spends its time. `python -m ret2.bench.eval_pool` and
`python -m ret2.bench.train_tiny` benchmark the evaluation pool and a tiny fine-tuning run through the CLIs' code.
`python -m ret2.bench.trec_agreement` scores an evaluation's run files with trec_eval against its `results.json`.
`python -m ret2.bench.filtered_search` measures metadata filters, keyword and hybrid search (an index at 1M documents,
and the demo's trained models on their text-query rows).
"""
