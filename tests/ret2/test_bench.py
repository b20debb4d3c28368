"""The benchmark package: the quick suite runs end to end and reports sane values; its measuring tools give known
answers; the reference ReT-1 code gives ReT-1 mode's embeddings. No timing is asserted."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, WORDS, pattern
from PIL import Image
from torch import nn

from ret2.bench.common import BLACK_PIXEL, build_model, count_flops, make_inputs, peak_memory_bytes
from ret2.bench.reference_ret1 import ReferenceRet1
from ret2.tiny import tiny_model_and_processor


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """`python -m ret2.bench --quick`, run as a user runs it."""
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ret2.bench", "--quick", "--json", str(path)], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(path.read_text()), result.stdout


@pytest.mark.slow
def test_quick_suite_report_has_every_section_and_sane_values(quick_report):
    report, stdout = quick_report
    assert report["suite"] == "quick" and report["machine"]["torch"] == torch.__version__
    for title in ("## encode", "## index", "## train", "## targets"):
        assert title in stdout
    rows = report["rows"]
    assert not [r for r in rows if "skipped" in r]

    encode = [r for r in rows if r["section"] == "encode"]
    assert {(r["variant"], r["modality"]) for r in encode} >= {
        (v, m) for v in ("backbone", "ret2", "ret1", "reference") for m in ("text", "image", "image+text")
    }
    for r in encode:
        assert 0 < r["best_s"] <= r["median_s"] and len(r["seconds"]) >= 1
        assert r["items_per_s"] == pytest.approx(r["batch"] / r["best_s"])
        assert r["peak_mem_mb"] > 0
    flops = {r["variant"]: r["gflop_per_item"] for r in encode if "gflop_per_item" in r and r["attn"] == "sdpa"}
    assert 0 < flops["backbone"] < flops["ret2"] < flops["ret1"]  # the cell adds work; ReT-1 takes 4 steps, not 3

    single, multi = (next(r for r in rows if r.get("index") == kind) for kind in ("single", "multi"))
    assert single["bytes_per_doc"] == 768 * 4 and multi["bytes_per_doc"] == 32 * 128 * 4
    assert multi["scaled_from_docs"] == 1_000 and single["scaled_from_docs"] is None

    train = {(r["mode"], r["checkpointing"], r["autocast"]): r for r in rows if r["section"] == "train"}
    assert len(train) == 7 and all(r["samples_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in train.values())
    assert ("full", False, "bf16") in train
    trainable = [train[(mode, False, None)]["trainable_params_m"] for mode in ("frozen", "lora", "full")]
    assert trainable[0] < trainable[1] < trainable[2]
    assert len({r["total_params_m"] for r in train.values() if r["mode"] != "lora"}) == 1

    checks = {(c["check"], c["variant"], c["modality"]): c["max_abs_diff"] for c in report["checks"]}
    assert {k[0] for k in checks} == {"skip_vs_placeholder", "ret1_vs_reference"}
    assert all(diff <= 1e-5 for diff in checks.values()), checks

    targets = {t["target"][0] for t in report["targets"]}
    assert targets == {"1", "2", "3", "4"}
    (index_target,) = [t for t in report["targets"] if t["target"].startswith("3")]
    assert index_target["ratio"] == pytest.approx(768 / (32 * 128)) and index_target["met"]


@pytest.mark.parametrize("use_tanh,b_in,b_f", [(False, 0.0, 0.0), (True, 1.5, -0.7)])
def test_reference_ret1_gives_ret1_mode_embeddings(use_tanh, b_in, b_f):
    """The reference (placeholders, nn.MultiheadAttention, additive masks) and ReT-1 mode (towers skipped per
    sample, SDPA) agree on a batch mixing every modality combination, on both sides."""
    model, processor = tiny_model_and_processor(
        WORDS, seed=4, pooling="none", share_encoder=False, num_latent_tokens=4, use_tanh=use_tanh,
        input_gate_bias_prior=b_in, forget_gate_bias_prior=b_f,
    )  # fmt: skip
    texts = ["a red circle on the left", None, "a big blue square", "green star"]
    images = [pattern(1), pattern(2), None, pattern(3)]
    skipped = processor(text=texts, images=images, return_tensors="pt")
    padded = processor(text=texts, images=images, return_tensors="pt", pad_missing_images=True)
    for side in ("queries", "documents"):
        reference = ReferenceRet1.from_ret2(model, side=side).eval()
        with torch.no_grad():
            ours = getattr(model, f"encode_{side}")(**skipped)
            theirs = reference(**padded)
        assert ours.shape == theirs.shape == (4, 4, model.config.embedding_dim)
        assert (ours - theirs).abs().max() <= 1e-5, side
    assert not torch.allclose(ours, model.encode_queries(**skipped))  # the two sides really differ


def test_reference_ret1_rejects_an_unknown_side():
    model, _ = tiny_model_and_processor(WORDS, pooling="none", share_encoder=False)
    with pytest.raises(ValueError, match="valid: \\['documents', 'queries'\\]"):
        ReferenceRet1.from_ret2(model, side="passages")


def test_inputs_match_the_processor_and_ignore_placeholders():
    """Same texts and images with or without placeholders; the placeholder is what the processor makes of a black
    image; missing text is the tokenised empty string."""
    model = build_model("tiny", "ret2", torch.device("cpu"))
    skipped = make_inputs(model.config, 3, "text", False, (5, 10), torch.device("cpu"))
    padded = make_inputs(model.config, 3, "text", True, (5, 10), torch.device("cpu"))
    assert "pixel_values" not in skipped and padded["vision_mask"].tolist() == [0, 0, 0]
    assert torch.equal(skipped["input_ids"], padded["input_ids"])
    lengths = skipped["attention_mask"].sum(1)
    assert ((lengths >= 7) & (lengths <= 12)).all()  # 5-10 words + <bos> + <eos>
    _, processor = tiny_model_and_processor(WORDS)
    black = processor.image_processor([Image.new("RGB", (40, 40))], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(black[0, :, 0, 0], torch.tensor(BLACK_PIXEL, dtype=black.dtype))
    images = make_inputs(model.config, 3, "image", True, (5, 10), torch.device("cpu"))
    assert images["input_ids"].tolist() == [[49406, 49407]] * 3 and images["text_mask"].tolist() == [0, 0, 0]


def test_peak_memory_counts_live_tensors():
    """a and b (4 MB each) are alive together, then a is freed before c: the peak is 8 MB."""
    x = torch.randn(1000, 1000)

    def f():
        a = x @ x
        b = a @ a
        del a
        c = b + 1
        return c

    assert peak_memory_bytes(f, torch.device("cpu")) == pytest.approx(8_000_000, rel=1e-3)


def test_flop_count_of_a_linear_layer():
    layer = nn.Linear(64, 32)
    x = torch.randn(10, 64)
    assert count_flops(lambda: layer(x), layer) == 2 * 10 * 64 * 32
    assert layer.weight.requires_grad  # restored after the count




def test_search_index_rows_of_every_engine_at_a_tiny_size():
    """`ret2.bench.search_index.run` at 512 clustered documents: both exact rows (the fastest at speed 1.0), each
    quantized row with its code size, IVF-PQ with ids, centroids and codebooks counted; int8 rescored finds the exact
    top 10."""
    from ret2.bench.search_index import run

    rows = run(512, dim=16, num_queries=4, recall_queries=8, repeats=1, clusters=8, hnsw=False,
               precisions=("int8", "binary"), rescore_multipliers=(0, 10), nprobe=(8,), nlist=8, pq_m=4)  # fmt: skip
    assert len(rows) == 8 and max(r["speedup"] for r in rows[:2]) == 1.0
    by_engine = {r["engine"]: r for r in rows}
    assert by_engine["int8 codes, flat scan"]["bytes_per_doc"] == 16
    assert by_engine["int8 codes, flat scan + fp16 rescoring of 10 x k"]["recall_at_10"] == 1.0
    assert by_engine["binary codes, flat scan"]["bytes_per_doc"] == 2
    ivfpq = by_engine["IVF-PQ (nlist=8, m=4), nprobe=8 + fp16 rescoring of 10 x k"]
    assert ivfpq["bytes_per_doc"] == (512 * (4 + 8) + 8 * 16 * 4 + 256 * 16 * 4) / 512
    assert all(0 <= r["recall_at_10"] <= 1 for r in rows)
