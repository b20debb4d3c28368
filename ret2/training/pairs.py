"""Fine-tune on your own pairs: each record pairs a query with the document it should retrieve, either side text, an
image, or both; no M-BEIR candidate pool or instruction file.

A pair record (a jsonl / csv line, a `datasets.Dataset` row or a dict) has `query_text` and / or `query_image`,
`doc_text` and / or `doc_image` (image paths relative to the image root, as in `ret2.records`), and optionally
`doc_id` (default: the document's text and image, so repeated documents are one document and are never counted as
each other's negatives). The pairs become a `ContrastiveDataset` (queries against a pool of their documents) and
train through `ret2.training.train.train`: the same Trainer, collator and in-batch-negative loss as M-BEIR training.
Then rebuild your index with the new model (`Ret2Index.build(folder, docs, model=output_dir)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from ret2.records import Records, raw_records, relative_image

from .dataset import CandidatePool, ContrastiveDataset, m2kr_query
from .train import DataArguments, ModelArguments, train
from .trainer import ContrastiveTrainer

PAIR_SIDES = ("query", "doc")


def pairs_dataset(source: Records, image_root: str | Path | None = None, seed: int = 0) -> tuple[ContrastiveDataset, Path]:
    """The contrastive examples of pair records (see the module docstring) and their image root."""
    import datasets  # here: importing the module (ret2-index's --help among others) stays light

    raw, root = raw_records(source, image_root)
    queries, docs = [], {}
    for n, (where, record) in enumerate(raw):
        sides = {}
        for side in PAIR_SIDES:
            text, image = record.get(f"{side}_text") or None, record.get(f"{side}_image") or None
            if text is None and image is None:
                raise ValueError(f"{where}: pair has neither {side}_text nor {side}_image (fields: {sorted(record)})")
            sides[side] = (None if text is None else str(text), None if image is None else relative_image(image, root, where))
        did = str(record.get("doc_id") or f"{sides['doc'][0]}\0{sides['doc'][1]}")
        if docs.setdefault(did, sides["doc"]) != sides["doc"]:
            raise ValueError(f"{where}: doc_id {did!r} names two different documents")
        text, image = sides["query"]
        queries.append({"qid": str(record.get("id", n)), "text": text, "img_path": image, "pos_ids": [did]})
    if not queries:
        raise ValueError(f"pair source {source!r} has no records")
    pool = datasets.Dataset.from_list([{"did": d, "text": t, "img_path": i} for d, (t, i) in docs.items()])
    candidates = CandidatePool(pool, "did", "img_path", lambda row: row["text"])
    return ContrastiveDataset(datasets.Dataset.from_list(queries), candidates, m2kr_query, seed=seed), root


def train_pairs(
    source: Records, model: str, output_dir: str | Path, image_root: str | Path | None = None, **training: Any
) -> ContrastiveTrainer:
    """Fine-tune `model` (a ReT-2 folder or Hub id, a CLIP / SigLIP checkpoint, or "tiny") on pair records and save
    it to `output_dir`; returns the trainer.

    Args:
        source: pair records (see the module docstring).
        model: the model to start from.
        output_dir: where the fine-tuned model (and its processor) is saved.
        image_root: the folder image paths are relative to (default: the source file's folder).
        **training: `transformers.TrainingArguments` fields (`num_train_epochs`, `per_device_train_batch_size`,
            `learning_rate`, `seed`, ...); `report_to` defaults to "none" and `save_strategy` to "no".
    """
    training = {"report_to": "none", "save_strategy": "no", **training}
    args = TrainingArguments(output_dir=str(output_dir), **training)
    train_set, root = pairs_dataset(source, image_root, args.seed)
    # Your own pairs are read like the documents of an index and the inputs of `encode`: upright (docs/images.md).
    data = DataArguments(image_root=str(root), image_orientation="upright")
    return train(ModelArguments(model=model), data, args, datasets=(train_set, None))
