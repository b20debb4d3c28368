"""The image orientation rule (docs/images.md): evaluation reads an EXIF-rotated file as stored (as the M-BEIR / M2KR
benchmarks do), the index and `Ret2Model.encode` upright; the rule keys the embedding cache."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pattern
from PIL import Image, ImageOps

from ret2.data.images import ImageLoader
from ret2.data.mbeir import EVAL_ROWS, read_json_lines
from ret2.data.synthetic import generate_mbeir
from ret2.cache import cache_folder, load_pool
from ret2.model import load_model_and_processor, model_fingerprint
from ret2.eval.encoder import EncodeOptions
from ret2.commands import eval_mbeir
from ret2.eval import mbeir
from ret2.index import Ret2Index
from ret2.tiny import tiny_model_and_processor, words_of

FP16_STEP = 2e-3  # the cache and the index keep fp16 embeddings: within a couple of fp16 steps of the fp32 ones


def save_exif_rotated_jpeg(path: Path) -> None:
    """A 48 x 30 JPEG whose EXIF says: rotate 90 degrees clockwise to display (orientation 6), so it shows 30 x 48."""
    exif = Image.Exif()
    exif[0x0112] = 6
    pattern(7, size=48).crop((0, 0, 48, 30)).save(path, format="JPEG", exif=exif)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic M-BEIR whose first image-only candidate of a text -> image row is an EXIF-rotated JPEG, a tiny saved
    model, and the fp32 document embeddings of that file's stored and upright pixels."""
    tmp = tmp_path_factory.mktemp("orientation")
    data = generate_mbeir(tmp / "mbeir", n_per_task=2, pool_size=8, n_train_per_task=1, m2kr=False)
    row, candidate = next(
        (row, c) for row in EVAL_ROWS for _, c in read_json_lines(row.pool_path(data)) if c["img_path"] and not c["txt"]
    )
    photo = data / candidate["img_path"]
    save_exif_rotated_jpeg(photo)  # the same name: PIL reads the format from the bytes
    texts = [p.read_text() for p in data.rglob("*") if p.suffix in (".jsonl", ".tsv")]
    model, processor = tiny_model_and_processor(words_of(texts), seed=0, forget_gate_bias_prior=-4.0,
                                                input_gate_bias_prior=4.0)  # fmt: skip
    model_dir = tmp / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    with Image.open(photo) as image:
        stored = image.convert("RGB")  # UniIR's Image.open(path).convert("RGB")
        upright = ImageOps.exif_transpose(image).convert("RGB")
    assert stored.size == (48, 30) and upright.size == (30, 48)
    with torch.no_grad():
        pixels = processor(images=[stored, upright], return_tensors="pt")
        expected = dict(zip(("stored", "upright"), model.encode_documents(**pixels).numpy()))
    assert np.abs(expected["stored"] - expected["upright"]).max() > 50 * FP16_STEP  # the rule makes a difference
    return {"tmp": tmp, "data": data, "row": row, "did": candidate["did"], "photo": photo, "model_dir": model_dir,
            "model": model, "processor": processor, "expected": expected}  # fmt: skip


def cached_candidate(setup, cache: Path, orientation: str) -> np.ndarray:
    """The cached embedding of the rotated candidate, read through the cache key of `orientation`."""
    pool = mbeir.candidate_pool(setup["row"], setup["data"], cache)
    fingerprint = model_fingerprint(str(setup["model_dir"]))
    folder = cache_folder(cache, pool, fingerprint, torch.float32, 5, orientation=orientation)
    embeddings = load_pool(pool, folder, 5)
    return np.concatenate(embeddings.shards)[embeddings.ids.index(setup["did"])].astype(np.float32)


@pytest.mark.slow
def test_evaluation_encodes_the_stored_pixels_and_the_flag_switches_to_upright(setup):
    """`evaluate_mbeir` (default "stored") caches the candidate's stored-pixel embedding; `--image-orientation
    upright` gives the upright one under another cache key, never reusing the first."""
    row, out = setup["row"], setup["tmp"] / "eval"
    options = EncodeOptions(cache_dir=out / "cache", num_workers=0, device="cpu", shard_size=5, batch_size=4)
    mbeir.evaluate_mbeir(setup["model_dir"], setup["data"], out, pool="local", tasks=[row.query_stem], options=options)
    stored = cached_candidate(setup, out / "cache", "stored")
    np.testing.assert_allclose(stored, setup["expected"]["stored"], atol=FP16_STEP)

    eval_mbeir.run(["--model", str(setup["model_dir"]), "--data-root", str(setup["data"]), "--output-dir", str(out),
                "--device", "cpu", "--num-workers", "0", "--shard-size", "5", "--pool", "local",
                "--tasks", row.query_stem, "--image-orientation", "upright"])  # fmt: skip
    upright = cached_candidate(setup, out / "cache", "upright")
    np.testing.assert_allclose(upright, setup["expected"]["upright"], atol=FP16_STEP)
    assert len(list((out / "cache" / row.pool_stem).iterdir())) == 2  # one cache folder per rule
    meta = json.loads(next((out / "cache" / row.pool_stem).glob("*/meta.json")).read_text())
    assert meta["image_orientation"] in ("stored", "upright")


@pytest.mark.slow
def test_index_and_encode_read_the_upright_pixels(setup):
    """`Ret2Index` (default "upright", kept in index.json for add and search) and `Ret2Model.encode` encode what a
    photo viewer shows; `encode(..., image_orientation="stored")` gives the stored pixels' embedding."""
    folder = setup["tmp"] / "index"
    shutil.rmtree(folder, ignore_errors=True)
    records = [{"id": "photo", "image": setup["photo"].name}]
    index = Ret2Index.build(folder, records, setup["model_dir"], image_root=setup["photo"].parent, device="cpu")
    assert index.image_orientation == "upright"
    assert json.loads((folder / "index.json").read_text())["config"]["image_orientation"] == "upright"
    np.testing.assert_allclose(index.embeddings().shards[0][0].astype(np.float32), setup["expected"]["upright"],
                               atol=FP16_STEP)  # fmt: skip
    # An image query of the same file finds it with cosine 1 (up to fp16): queries are read upright too.
    hit = Ret2Index.open(folder, device="cpu").search(setup["photo"], k=1)[0]
    assert hit.id == "photo"

    stored_index = Ret2Index.build(setup["tmp"] / "index-stored", records, setup["model_dir"],
                                   image_root=setup["photo"].parent, device="cpu", image_orientation="stored")
    np.testing.assert_allclose(stored_index.embeddings().shards[0][0].astype(np.float32),
                               setup["expected"]["stored"], atol=FP16_STEP)  # fmt: skip

    model, processor = load_model_and_processor(str(setup["model_dir"]))
    for orientation in ("upright", "stored"):
        kwargs = {} if orientation == "upright" else {"image_orientation": "stored"}  # upright is encode's default
        encoded = model.encode([setup["photo"]], kind="document", processor=processor, **kwargs)[0]
        np.testing.assert_allclose(encoded, setup["expected"][orientation], atol=1e-5)


def test_an_unknown_orientation_names_the_valid_ones(setup, tmp_path):
    message = r"image orientation 'sideways' is not valid; valid: \['stored', 'upright'\]"
    with pytest.raises(ValueError, match=message):
        ImageLoader(tmp_path, "sideways")
    with pytest.raises(ValueError, match=message):
        EncodeOptions(image_orientation="sideways")
    with pytest.raises(ValueError, match=message):
        setup["model"].encode([setup["photo"]], kind="query", processor=setup["processor"], image_orientation="sideways")
    with pytest.raises(ValueError, match=message):
        Ret2Index.build(tmp_path / "index", [{"id": "a", "text": "red"}], setup["model_dir"], image_orientation="sideways")
    with pytest.raises(SystemExit):
        eval_mbeir.run(["--model", "m", "--data-root", str(tmp_path), "--output-dir", str(tmp_path), "--image-orientation",
                    "sideways"])  # fmt: skip


def test_the_dataset_loader_reads_stored_pixels_by_default(tmp_path):
    save_exif_rotated_jpeg(tmp_path / "photo.jpg")
    assert ImageLoader(tmp_path)("photo.jpg").size == (48, 30)
    assert ImageLoader(tmp_path, "upright")("photo.jpg").size == (30, 48)
