"""The evaluation's run files: `write_trec` writes one TREC line per ranked document, `trec_order` ranks equal scores
as trec_eval does, and trec_eval (through ir-measures) scores the file as the evaluation does."""

import ir_measures
import numpy as np
from ir_measures import RR, Qrel, Success, nDCG

from ret2.eval.report import trec_order, write_trec
from ret2.metrics import compute_retrieval_metrics


def test_write_trec(tmp_path):
    path = tmp_path / "run.trec"
    write_trec(path, ["q1", "q2"], ["d0", "d1", "d2"], np.array([[2, 0], [1, 2]]), np.array([[0.9, 0.5], [0.7, 0.1]]), "r")
    assert path.read_text().splitlines() == [
        "q1 Q0 d2 1 0.9 r", "q1 Q0 d0 2 0.5 r", "q2 Q0 d1 1 0.7 r", "q2 Q0 d2 2 0.1 r",
    ]


def test_equal_scores_ranked_as_trec_eval_ranks_them(tmp_path):
    """Pins the tie rule: equal scores go by document id, larger first (trec_eval's `strcmp` order), so that
    trec_eval re-ranking the written file by its score column finds the evaluation's ranking and its numbers; and
    scores are written with all their digits (6 decimals would tie 0.6 and 0.6000001)."""
    doc_ids = ["d0", "d1", "d2", "d3", "d4"]
    # the search's order: by score, equal scores to the lower index
    indices = np.array([[1, 2, 0, 3, 4], [0, 3, 4, 1, 2]])
    scores = np.array([[0.75, 0.75, 0.5, 0.25, 0.25], [0.6000001, 0.6, 0.4, 0.4, 0.4]], dtype=np.float32)
    ordered, ordered_scores = trec_order(doc_ids, indices, scores)
    assert ordered.tolist() == [[2, 1, 0, 4, 3], [0, 3, 4, 2, 1]]
    assert ordered_scores.tolist() == [[0.75, 0.75, 0.5, 0.25, 0.25], scores[1].tolist()]

    run = tmp_path / "run.trec"
    write_trec(run, ["q1", "q2"], doc_ids, ordered, ordered_scores, "r")
    assert [float(line.split()[4]) for line in run.read_text().splitlines()] == ordered_scores.flatten().tolist()
    positives = [{"d1"}, {"d3", "d2"}]
    qrels = [Qrel(q, d, 1) for q, ds in zip(["q1", "q2"], positives) for d in sorted(ds)]
    # trec_eval itself; RR without a cutoff is RR@10 on runs of 5 documents
    trec_eval = ir_measures.pytrec_eval.calc_aggregate([Success @ 1, Success @ 5, RR, nDCG @ 10], qrels,
                                                       list(ir_measures.read_trec_run(str(run))))
    ours = compute_retrieval_metrics([[doc_ids[i] for i in row] for row in ordered.tolist()], positives, ks=[1, 5, 10])
    assert trec_eval == {Success @ 1: ours["recall@1"], Success @ 5: ours["recall@5"], RR: ours["mrr@10"],
                         nDCG @ 10: ours["ndcg@10"]}  # fmt: skip
    assert ours["mrr@10"] == (0.5 + 0.5) / 2
    # the search's own order (equal scores to the lower index) would have scored q1's positive at rank 1
    searched = compute_retrieval_metrics([[doc_ids[i] for i in row] for row in indices.tolist()], positives, ks=[10])
    assert searched["mrr@10"] == (1 + 0.5) / 2
