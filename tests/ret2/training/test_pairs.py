"""`ret2.training.pairs`: fine-tuning on your own (query, document) pairs through the Trainer path, then rebuilding
the index with the new model."""

import random

import numpy as np
import pytest

from ret2.data.synthetic import SCENES, caption, draw_scene
from ret2.index import Ret2Index
from ret2.tiny import tiny_model_and_processor, words_of
from ret2.training.pairs import pairs_dataset, train_pairs


def test_pairs_become_contrastive_examples(tmp_path):
    pairs = [{"query_text": "red circle", "doc_image": "a.png"}, {"query_image": "b.png", "doc_text": "blue star"},
             {"query_text": "red ring", "doc_image": "a.png", "extra": 1}]  # fmt: skip
    dataset, root = pairs_dataset(pairs, image_root=tmp_path)
    assert root == tmp_path and len(dataset) == 3 and len(dataset.pool) == 2  # one document, referenced twice
    example = dataset[1]
    assert example["query"] == {"id": "1", "text": None, "img_path": "b.png"}
    assert example["doc"] == {"id": "blue star\0None", "text": "blue star", "img_path": None}
    assert dataset[2]["doc"]["id"] == dataset[0]["doc"]["id"]
    with pytest.raises(ValueError, match=r"record 0: pair has neither doc_text nor doc_image"):
        pairs_dataset([{"query_text": "x"}])
    with pytest.raises(ValueError, match=r"doc_id 'd' names two different documents"):
        pairs_dataset([{"query_text": "x", "doc_text": "a", "doc_id": "d"}, {"query_text": "y", "doc_text": "b", "doc_id": "d"}])


def _mrr(model_dir, folder, held, image_root):
    docs = [{"id": p["doc_id"], "image": p["doc_image"]} for p in held]
    index = Ret2Index.build(folder, docs, model=model_dir, image_root=image_root)
    hits = index.search([p["query_text"] for p in held], k=len(held))
    return float(np.mean([1 / (1 + [h.id for h in hs].index(p["doc_id"])) for hs, p in zip(hits, held)]))


@pytest.mark.slow
def test_fine_tuned_model_retrieves_held_out_pairs_better(tmp_path):
    """Caption -> picture pairs of the synthetic scenes: 256 to train on, 32 held out. The start model is a random
    tiny ReT-2 (MRR 0.11 on the held-out pairs); 8 epochs (64 steps, ~15 s) bring it to 0.43."""
    scenes = random.Random(0).sample(range(len(SCENES)), 256 + 32)
    pairs = []
    for s in scenes:
        draw_scene(SCENES[s], side=32).save(tmp_path / f"s{s}.png")
        pairs.append({"query_text": caption(SCENES[s]), "doc_image": f"s{s}.png", "doc_id": f"s{s}"})
    train, held = pairs[:256], pairs[256:]
    model, processor = tiny_model_and_processor(words_of([p["query_text"] for p in pairs]), seed=0)
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    train_pairs(train, str(tmp_path / "start"), tmp_path / "tuned", image_root=tmp_path, num_train_epochs=8,
                per_device_train_batch_size=32, learning_rate=1e-3, seed=0, use_cpu=True, disable_tqdm=True)
    before = _mrr(tmp_path / "start", tmp_path / "index-start", held, tmp_path)
    after = _mrr(tmp_path / "tuned", tmp_path / "index-tuned", held, tmp_path)
    assert after > before + 0.15, (before, after)
