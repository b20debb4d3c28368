"""ret2_retrieval: retrieval metrics as a local `evaluate` module.

Load it offline with ``evaluate.load(str(ret2.metrics.EVALUATE_MODULE))``.

One implementation per formula: the numbers come from `ret2/metrics/retrieval.py`. `evaluate.load`
copies this script into its module cache, so neither an absolute import of our package (it may not be
installed where the module runs) nor a path relative to `__file__` would survive the copy. What does
survive is a same-folder relative import: `evaluate` copies `./retrieval.py` along with the script,
and `./retrieval.py` is a symlink to `../retrieval.py`. (`evaluate` parses imports line by line, so
keep one import per line.)
"""

import datasets
import evaluate
from .retrieval import compute_retrieval_metrics

_DESCRIPTION = """
Mean recall@k (UniIR / M2KR hit rate: 1 if any positive id is in the top k), mrr@k and ndcg@k
(binary relevance) of ranked id lists, and pseudo_recall@k (a top-k passage text contains a gold
answer, lower-cased) when `ranked_texts` and `answers` are passed.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[str]]`): ranked candidate ids per query, best first.
    references (`list[list[str]]`): positive ids per query (missing from the pool: never a hit).
    ks (`list[int]`, defaults to [1, 5, 10]): cut-offs; a k beyond a ranked list uses the whole list.
    ranked_texts (`list[list[str]]`, optional): the texts of `predictions`, for pseudo recall.
    answers (`list[list[str | dict]]`, optional): gold answers per query, for pseudo recall.
Returns:
    dict: {"recall@k": float, "mrr@k": float, "ndcg@k": float[, "pseudo_recall@k": float]} in [0, 1].
Example:
    >>> metric = evaluate.load(str(ret2.metrics.EVALUATE_MODULE))
    >>> metric.compute(predictions=[["d1", "d2"]], references=[["d2"]], ks=[1])
    {'recall@1': 0.0, 'mrr@1': 0.0, 'ndcg@1': 0.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Ret2Retrieval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10), ranked_texts=None, answers=None):
        return compute_retrieval_metrics(predictions, [set(r) for r in references], ks, ranked_texts, answers)
