"""The files an evaluation writes: TREC run files, `results.json` and `results.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ret2.data.synthetic import is_generated

import numpy as np


def trec_order(doc_ids: Sequence[str], indices: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(indices, scores)` with each row in the order trec_eval ranks a run file: score descending, equal scores by
    document id descending (trec_eval sorts by score, then `strcmp` of the ids, larger first; Python's `str`
    order is `strcmp`'s on UTF-8). The search orders by score already, ties to the lower pool index; only equal
    scores move. The evaluations score this order and `write_trec` writes it with every digit of the scores, so
    trec_eval, ir-measures or ranx re-ranking the file by its score column find the rank column's order."""
    indices, scores = indices.copy(), scores.copy()
    tied = np.flatnonzero((scores[:, 1:] == scores[:, :-1]).any(axis=1)) if scores.shape[1] > 1 else []
    for q in tied:
        row = sorted(zip(scores[q].tolist(), (doc_ids[i] for i in indices[q].tolist()), indices[q].tolist()),
                     reverse=True)  # (score, id) descending; ids are unique, so the index never decides
        scores[q], indices[q] = [s for s, _, _ in row], [i for _, _, i in row]
    return indices, scores


def write_trec(
    path: str | Path, qids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray, scores: np.ndarray, run_id: str
) -> None:
    """A TREC run file: one line `qid Q0 did rank score run_id` per retrieved document, rank from 1. Scores are
    written with the digits that read back as the same float (`repr`): rounding them (to 6 decimals, say) makes
    distinct scores equal, and trec_eval would re-order them by id. Pass rows in `trec_order` so that equal scores
    are already in trec_eval's order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for qid, row, row_scores in zip(qids, indices, scores):
            f.writelines(
                f"{qid} Q0 {doc_ids[i]} {rank} {score!r} {run_id}\n"
                for rank, (i, score) in enumerate(zip(row.tolist(), row_scores.tolist()), start=1)
            )


def write_report(
    output_dir: str | Path, results: dict, table: str, model: str | Path, fingerprint: str, data_root: str | Path,
    truncate_dim: int | None = None,
) -> None:
    """`results.json` and `results.md` (`table`) in `output_dir`. `results.json` holds the metrics under their keys;
    under "model", the model they were measured on: `{"name_or_path": ..., "fingerprint": ...}`
    (`ret2.model.model_fingerprint`), which `ret2-publish` checks against the model it publishes, and its
    `"truncate_dim"` when the embeddings were truncated (`EncodeOptions.truncate_dim`); under "data", the
    data: `{"root": ..., "generated": bool}` (written by `ret2.data.synthetic`), which decides whether the model card
    names the benchmark."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    named = {
        "model": {"name_or_path": str(model), "fingerprint": fingerprint,
                  **({"truncate_dim": truncate_dim} if truncate_dim is not None else {})},
        "data": {"root": str(data_root), "generated": is_generated(data_root)},
        **results,
    }  # fmt: skip
    (output_dir / "results.json").write_text(json.dumps(named, indent=2) + "\n", encoding="utf-8")
    (output_dir / "results.md").write_text(table, encoding="utf-8")
