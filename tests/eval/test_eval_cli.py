"""End-to-end runs of `ret2.eval.mbeir` and `ret2.eval.m2kr` on synthetic data with tiny saved models, and the embedding cache."""

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import processes
import torch
from conftest import REPO

from ret2.commands import eval_m2kr, eval_mbeir
from ret2.eval import m2kr, mbeir
from ret2.bench.trec_agreement import compare
from ret2.eval.encoder import EncodeOptions
from ret2.cache import Embeddings, cache_folder, encode_pool, load_pool
from ret2.encoding import encode_items
from ret2.model import load_model_and_processor, model_fingerprint
from ret2.data.m2kr import M2KR_DATASETS
from ret2.data.mbeir import EVAL_ROWS, GLOBAL_POOL, load_instructions
from ret2.jsonl import read_json_lines
from ret2.data.synthetic import generate_mbeir
from ret2.tiny import tiny_model_and_processor, words_of

ROWS = {row.query_stem: row for row in EVAL_ROWS}


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """Synthetic M-BEIR (16 rows, 4 queries and 16 candidates each) with a ReT-M2KR copy under `m2kr/`."""
    return generate_mbeir(tmp_path_factory.mktemp("mbeir"), n_per_task=4, pool_size=16, n_train_per_task=1)


def save_tiny(folder: Path, data: Path, **config) -> Path:
    """A tiny model over the words of the data, saved with its processor (loadable by AutoModel / AutoProcessor).

    The gate priors make the state follow the inputs: at random init the latent tokens dominate and all embeddings
    have cosine > 0.9997, where float rounding (which changes with the batch shape) would reorder candidates. A trained
    model spreads its embeddings; so do these priors.
    """
    texts = [p.read_text() for p in data.rglob("*") if p.suffix in (".jsonl", ".tsv")]
    model, processor = tiny_model_and_processor(
        words_of(texts), seed=0, forget_gate_bias_prior=-4.0, input_gate_bias_prior=4.0, **config
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_dir(data, tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "ret2-tiny", data)


def run_mbeir(model_dir: Path, data: Path, out: Path, *extra: str) -> dict:
    return eval_mbeir.run(["--model", str(model_dir), "--data-root", str(data), "--output-dir", str(out),
                       "--device", "cpu", "--num-workers", "0", "--shard-size", "5", *extra])


@pytest.fixture(scope="session")
def mbeir_run(model_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mbeir_run")
    run_mbeir(model_dir, data, out, "--pool", "both", "--batch-size", "4")
    return out


def trec_rankings(path: Path) -> list[tuple[str, str, int]]:
    return [(qid, did, int(rank)) for qid, _, did, rank, _, _ in (line.split() for line in path.read_text().splitlines())]


def test_mbeir_outputs(mbeir_run, model_dir, data):
    results = json.loads((mbeir_run / "results.json").read_text())
    assert results.pop("model") == {"name_or_path": str(model_dir), "fingerprint": model_fingerprint(str(model_dir))}
    assert results.pop("data") == {"root": str(data), "generated": True}  # ret2.data.synthetic's, not M-BEIR
    assert set(results) == {"local", "global"}
    for pool, rows in results.items():
        assert set(rows) == set(ROWS) | {"average"}
        for stem, metrics in ((s, m) for s, m in rows.items() if s != "average"):
            assert list(metrics) == [f"recall@{k}" for k in ROWS[stem].ks] + ["mrr@10", "ndcg@10"]
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
        primary = [rows[s][f"recall@{r.primary_k}"] for s, r in ROWS.items()]
        assert rows["average"] == pytest.approx(np.mean(primary))
    table = (mbeir_run / "results.md").read_text()
    assert table.count("\n| ") == 17 and "| WebQA (t->t) | 1 | R@5 |" in table and "hit rate" in table

    for pool, k in (("local", None), ("global", None)):
        for stem, row in ROWS.items():
            lines = [line.split() for line in (mbeir_run / "runs" / pool / f"{stem}.trec").read_text().splitlines()]
            qids = [r["qid"] for _, r in read_json_lines(row.query_path(data))]
            depth = min(max(row.ks), 16 if pool == "local" else 16 * 16)
            assert len(lines) == len(qids) * depth and all(len(line) == 6 and line[1] == "Q0" for line in lines)
            assert [line[0] for line in lines[::depth]] == qids
            assert [int(line[3]) for line in lines[:depth]] == list(range(1, depth + 1))
            assert lines[0][5] == f"ret2-tiny-{pool}"
            scores = [float(line[4]) for line in lines[:depth]]
            assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("rank_by", ["score", "rank"])
def test_trec_eval_scores_the_run_files_as_results_json(mbeir_run, data, rank_by):
    """trec_eval (through ir-measures) on the run files and qrels gives every recall@k (Success@k), mrr@10 and ndcg@10
    of results.json, ranking by the score column as trec_eval does, or by the rank column."""
    rows = compare(mbeir_run, data, rank_by)
    assert len(rows) == 32
    for row in rows:
        assert row["external"] == pytest.approx(row["ours"], abs=1e-12), (row["pool"], row["row"])


def test_batch_size_does_not_change_results(mbeir_run, model_dir, data, tmp_path):
    """Another batch size (and its own cache) gives the same metrics and the same rankings."""
    run_mbeir(model_dir, data, tmp_path, "--pool", "both", "--batch-size", "7")
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads((mbeir_run / "results.json").read_text())
    for run in sorted((mbeir_run / "runs").rglob("*.trec")):
        assert trec_rankings(tmp_path / run.relative_to(mbeir_run)) == trec_rankings(run), run.name


def test_quantized_search_with_full_rescoring_ranks_as_exact(mbeir_run, model_dir, data, tmp_path):
    """`--precision binary` with a multiplier covering every pool (16 local, 256 global candidates) rescores them all:
    the fp16 run's rankings and metrics, on the same cached embeddings; a bad precision is named."""
    run_mbeir(model_dir, data, tmp_path, "--pool", "both", "--cache-dir", str(mbeir_run / "cache"),
              "--precision", "binary", "--rescore-multiplier", "6")
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads((mbeir_run / "results.json").read_text())
    for run in sorted((mbeir_run / "runs").rglob("*.trec")):
        assert trec_rankings(tmp_path / run.relative_to(mbeir_run)) == trec_rankings(run), run.name
    with pytest.raises(ValueError, match=r"precision 'int4' is not one of \['fp16', 'int8', 'binary'\]"):
        EncodeOptions(precision="int4")


def test_global_pool_is_the_union_of_the_local_caches(mbeir_run, model_dir, data):
    """Only the 16 local pools are encoded; a global ranking is the exact ranking over their concatenation."""
    cache = mbeir_run / "cache"
    assert sorted(p.name for p in cache.iterdir() if p.name != "datasets") == sorted(r.pool_stem for r in EVAL_ROWS)
    model, processor = load_model_and_processor(str(model_dir))
    pools = [mbeir.candidate_pool(row, data, cache) for row in EVAL_ROWS]
    fingerprint = model_fingerprint(str(model_dir))
    folders = [cache_folder(cache, p, fingerprint, torch.float32, 5, orientation="stored") for p in pools]
    union = Embeddings.concat([load_pool(p, folder, 5) for p, folder in zip(pools, folders)])
    row = ROWS["mbeir_oven_task8_test"]
    items, _ = mbeir.read_row_queries(row, data, load_instructions(data / "instructions/query_instructions.tsv"),
                                      None, cache, set(union.ids))
    queries = encode_items(model, processor, items, data, batch_size=4, orientation="stored")
    scores = torch.from_numpy(queries).double() @ torch.from_numpy(np.concatenate(union.shards)).double().T
    expected = scores.sort(dim=1, descending=True, stable=True).indices[:, : max(row.ks)]
    ranked = [did for _, did, _ in trec_rankings(mbeir_run / "runs" / "global" / f"{row.query_stem}.trec")]
    assert ranked == [union.ids[i] for i in expected.flatten().tolist()]


def test_global_pool_file_must_be_the_union(model_dir, data, tmp_path):
    root = shutil.copytree(data, tmp_path / "data", ignore=shutil.ignore_patterns("mbeir_images", "m2kr"))
    path = root / GLOBAL_POOL
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(ValueError, match=r"mbeir_union_test_cand_pool.jsonl is not the union .* lacks 1 "):
        run_mbeir(model_dir, root, tmp_path / "out", "--pool", "global", "--tasks", "webqa_task1")


def test_partial_root_evaluates_the_rows_it_has(mbeir_run, model_dir, data, tmp_path):
    """A root holding one row's files (a partial download) evaluates that row's local pool with the same scores as the
    full root; the global pool, which needs all 16 local pools, names every missing file in one error."""
    row = ROWS["mbeir_mscoco_task3_test"]
    root = tmp_path / "partial"
    for path in (row.query_path(data), row.qrels_path(data), row.pool_path(data), data / "mbeir_images/mscoco_images"):
        copy = shutil.copytree if path.is_dir() else shutil.copyfile
        (root / path.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
        copy(path, root / path.relative_to(data))
    results = run_mbeir(model_dir, root, tmp_path / "out", "--pool", "local", "--tasks", "mscoco_task3")
    expected = json.loads((mbeir_run / "results.json").read_text())["local"][row.query_stem]
    assert results["local"][row.query_stem] == pytest.approx(expected)
    with pytest.raises(FileNotFoundError, match=r"15 missing M-BEIR file\(s\) \['cand_pool/local/mbeir_visualnews_task0"
                                                r"_cand_pool.jsonl', .*'\.\.\. 9 more'\] \(needed for the global pool") as error:
        run_mbeir(model_dir, root, tmp_path / "out", "--pool", "global", "--tasks", "mscoco_task3")
    assert str(error.value).count(".jsonl") == 6 and "\n" not in str(error.value)


def test_resumed_encoding_equals_an_uninterrupted_one(model_dir, data, tmp_path, capsys):
    """An encoding killed after 2 shards resumes with the others only and ends with the same bytes; its progress bar
    counts the documents of the whole pool."""
    model, processor = load_model_and_processor(str(model_dir))
    pool = mbeir.candidate_pool(ROWS["mbeir_cirr_task7_test"], data, tmp_path)  # 16 candidates: shards of 3 -> 6
    fingerprint = model_fingerprint(str(model_dir))

    def folder(name):
        return cache_folder(tmp_path / name, pool, fingerprint, torch.float32, 3, orientation="stored")

    encode_pool(model, processor, pool, folder("full"), data, batch_size=2, shard_size=3, orientation="stored")
    written = []

    def crash_after_two(shard):
        written.append(shard)
        if len(written) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_pool(model, processor, pool, folder("resumed"), data, batch_size=2, shard_size=3,
                    on_shard=crash_after_two, orientation="stored")
    written.clear()
    capsys.readouterr()
    encode_pool(model, processor, pool, folder("resumed"), data, batch_size=2, shard_size=3, on_shard=written.append,
                orientation="stored")
    assert written == [2, 3, 4, 5]
    # one progress bar over the pool, starting from the 6 documents of the 2 cached shards, not one bar per shard
    bar = capsys.readouterr().err
    assert f"encode {pool.name}:" in bar and " 6/16 " in bar and " 16/16 " in bar and "shard" not in bar, bar
    full, resumed = load_pool(pool, folder("full"), 3), load_pool(pool, folder("resumed"), 3)
    assert resumed.ids == full.ids == pool.ids
    np.testing.assert_array_equal(np.concatenate(resumed.shards), np.concatenate(full.shards))
    assert np.concatenate(full.shards).dtype == np.float16


def test_half_written_shard_is_re_encoded(model_dir, data, tmp_path, caplog):
    """A shard cut short after a run (a full disk, a machine dying mid-write) and one left without its manifest are
    re-encoded by the rerun, each with a warning naming it; the rerun's results equal the first run's."""
    first = run_mbeir(model_dir, data, tmp_path, "--pool", "local", "--tasks", "webqa_task1")
    shards = sorted((tmp_path / "cache" / "mbeir_webqa_task1_cand_pool").rglob("shard-*.npy"))  # 16 cands: 4 shards
    full = shards[1].read_bytes()
    shards[1].write_bytes(full[: len(full) // 2])
    shards[2].with_suffix(".json").unlink()
    with caplog.at_level(logging.WARNING, logger="ret2.cache"):
        again = run_mbeir(model_dir, data, tmp_path, "--pool", "local", "--tasks", "webqa_task1")
    assert again == first and shards[1].read_bytes() == full
    warned = [r.getMessage() for r in caplog.records if "re-encoding" in r.getMessage()]
    assert len(warned) == 2 and "shard 1:" in warned[0] and "truncated" in warned[0]
    assert "shard 2: has no manifest" in warned[1]


def test_sharded_ranks_fill_the_same_cache(model_dir, data, tmp_path):
    """Ranks 0 and 1 of 2 write disjoint contiguous shards that together equal one process's cache."""
    model, processor = load_model_and_processor(str(model_dir))
    pool = mbeir.candidate_pool(ROWS["mbeir_webqa_task1_test"], data, tmp_path)
    fingerprint = model_fingerprint(str(model_dir))
    alone, split = (
        cache_folder(tmp_path / name, pool, fingerprint, torch.float32, 3, orientation="stored")
        for name in ("alone", "split")
    )
    encode_pool(model, processor, pool, alone, data, batch_size=3, shard_size=3, orientation="stored")
    by_rank = {0: [], 1: []}
    for rank in (0, 1):
        encode_pool(model, processor, pool, split, data, batch_size=3, shard_size=3, rank=rank, world_size=2,
                    on_shard=by_rank[rank].append, orientation="stored")
    assert by_rank == {0: [0, 1, 2], 1: [3, 4, 5]}
    np.testing.assert_array_equal(np.concatenate(load_pool(pool, split, 3).shards),
                                  np.concatenate(load_pool(pool, alone, 3).shards))


def test_model_fingerprint_follows_content(model_dir, tmp_path):
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert model_fingerprint(str(copy)) == model_fingerprint(str(model_dir))
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"dropout"', '"dropout" ', 1))
    assert model_fingerprint(str(copy)) != model_fingerprint(str(model_dir))


def test_multi_vector_model_end_to_end(data, tmp_path):
    """A late-interaction model (pooling="none") runs both pools; its cache holds (n, K, D) shards."""
    folder = save_tiny(tmp_path / "ret1-tiny", data, pooling="none")
    results = run_mbeir(folder, data, tmp_path / "out", "--pool", "both", "--batch-size", "8",
                        "--tasks", "webqa_task1", "OVEN ((i,t)->(i,t))")
    assert set(results["local"]) == set(results["global"]) == {"mbeir_webqa_task1_test", "mbeir_oven_task8_test", "average"}
    shard = np.load(next((tmp_path / "out" / "cache" / "mbeir_webqa_task1_cand_pool").rglob("shard-00000.npy")))
    assert shard.shape == (5, 8, 32) and shard.dtype == np.float16
    top_score = float((tmp_path / "out" / "runs" / "local" / "mbeir_webqa_task1_test.trec").read_text().split()[4])
    assert 1.0 < top_score <= 8.0 + 1e-2  # a sum over the 8 query tokens of cosines


def test_m2kr_end_to_end(model_dir, data, tmp_path):
    results = eval_m2kr.run(["--model", str(model_dir), "--data-root", str(data / "m2kr"), "--output-dir", str(tmp_path),
                         "--device", "cpu", "--num-workers", "1", "--batch-size", "6"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved.pop("model")["fingerprint"] == model_fingerprint(str(model_dir))
    assert saved.pop("data") == {"root": str(data / "m2kr"), "generated": True} and saved == results
    assert {name: list(metrics) for name, metrics in results.items()} == {
        "OVEN": ["recall@5"], "InfoSeek": ["recall@5", "pseudo_recall@5"], "E-VQA": ["recall@5", "pseudo_recall@5"],
    }
    assert "| InfoSeek |" in (tmp_path / "results.md").read_text()
    lines = [line.split() for line in (tmp_path / "runs" / "evqa.trec").read_text().splitlines()]
    assert len(lines) == 4 * 5 and all(len(line) == 6 and line[1] == "Q0" for line in lines)
    assert [int(line[3]) for line in lines[:5]] == [1, 2, 3, 4, 5]


@pytest.mark.processes
def test_m2kr_finds_the_generators_m2kr_folder_from_a_new_process(model_dir, data, tmp_path):
    """`ret2-synthetic` writes M-BEIR under ROOT and ReT-M2KR under ROOT/m2kr: `ret2-eval-m2kr --data-root ROOT`
    evaluates ROOT/m2kr (images relative to it) with the same scores as `--data-root ROOT/m2kr`. Started as
    `python -m`, its INFO lines (logger `__main__`) are shown like the installed command's."""
    common = ["--model", str(model_dir), "--device", "cpu", "--num-workers", "0", "--datasets", "OVEN"]
    run = processes.run([sys.executable, "-m", "ret2.eval.m2kr", "--data-root", data, "--output-dir", tmp_path / "root",
                         *common], timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"M2KR data found under {data / 'm2kr'}" in run.stderr
    direct = eval_m2kr.run(["--data-root", str(data / "m2kr"), "--output-dir", str(tmp_path / "m2kr"), *common])
    found = json.loads((tmp_path / "root" / "results.json").read_text())
    assert found.pop("model")["fingerprint"] == model_fingerprint(str(model_dir))
    assert found.pop("data") == {"root": str(data / "m2kr"), "generated": True} and found == direct


def test_m2kr_without_data_names_both_folders_it_looked_in(tmp_path):
    (tmp_path / "m2kr").mkdir()
    command = Path(sys.executable).parent / "ret2-eval-m2kr"
    run = processes.run([command, "--model", "unused", "--data-root", tmp_path, "--output-dir", tmp_path / "out"],
                        timeout=120)  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"ret2-eval-m2kr: error: no M2KR sub-dataset in the 'ret' layout under {tmp_path} or "
        f"{tmp_path / 'm2kr'} (looked for the files of each of {list(M2KR_DATASETS)}, e.g. WIT: wit_test.jsonl and "
        "wit_passages_test.jsonl) (rerun with --traceback for the traceback)"
    )


def test_m2kr_wrong_image_root_fails_before_encoding(model_dir, data, tmp_path):
    """ReT-M2KR image paths are `images/...` under the dataset root (the default image root); the root's `images/`
    folder as --image-root is refused before any encoding, naming the record, its line and its path."""
    m2kr_root = data / "m2kr"
    line_no, first = next(read_json_lines(m2kr_root / "oven_test.jsonl"))
    assert first["image_path"].startswith("images/") and (m2kr_root / first["image_path"]).is_file()
    with pytest.raises(FileNotFoundError, match=rf"oven_test.jsonl:{line_no}: image '{first['image_path']}' of record "
                                                rf"'{first['data_id']}' is not under the image root {m2kr_root}/images"):
        eval_m2kr.run(["--model", str(model_dir), "--data-root", str(m2kr_root), "--image-root", str(m2kr_root / "images"),
                   "--output-dir", str(tmp_path), "--device", "cpu", "--num-workers", "0", "--datasets", "OVEN"])
    assert not list(tmp_path.rglob("*.npy"))


def test_missing_image_names_file_line_and_path(model_dir, data, tmp_path):
    root = shutil.copytree(data, tmp_path / "data", ignore=shutil.ignore_patterns("m2kr"))
    pool = ROWS["mbeir_nights_task4_test"].pool_path(root)
    line_no, record = list(read_json_lines(pool))[2]
    (root / record["img_path"]).unlink()
    with pytest.raises(FileNotFoundError) as error:  # raised in a DataLoader worker, re-raised here
        eval_mbeir.run(["--model", str(model_dir), "--data-root", str(root), "--output-dir", str(tmp_path / "out"),
                    "--device", "cpu", "--num-workers", "1", "--pool", "local", "--tasks", "nights_task4"])
    assert f"{pool}:{line_no}" in str(error.value) and record["img_path"] in str(error.value)


def test_malformed_record_names_file_and_line(model_dir, data, tmp_path):
    root = shutil.copytree(data, tmp_path / "data", ignore=shutil.ignore_patterns("mbeir_images", "m2kr"))
    queries = ROWS["mbeir_webqa_task1_test"].query_path(root)
    lines = queries.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"query_modality": "text"', '"query_modality": "video"')
    queries.write_text("".join(lines))
    with pytest.raises(ValueError, match=rf"{queries}:3: query_modality 'video'"):
        run_mbeir(model_dir, root, tmp_path / "out", "--pool", "local", "--tasks", "webqa_task1")


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['webqa_task9'\]; valid: \['visualnews_task0'"):
        mbeir.select_rows(["webqa_task9"])
    assert [r.query_stem for r in mbeir.select_rows(["CIRR ((i,t)->i)", "mbeir_webqa_task1_test", "nights_task4"])] == [
        "mbeir_webqa_task1_test", "mbeir_nights_task4_test", "mbeir_cirr_task7_test"]


@pytest.mark.slow
@pytest.mark.processes
def test_torchrun_two_processes_match_one(mbeir_run, model_dir, data, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo, CPU): each rank encodes half of every pool; rank 0 scores. Same results."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ret2.eval.mbeir", "--model", str(model_dir), "--data-root", str(data), "--output-dir", str(tmp_path),
               "--device", "cpu", "--num-workers", "0", "--shard-size", "5", "--pool", "both", "--batch-size", "4"]
    result = processes.run(command, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads((mbeir_run / "results.json").read_text())
    for run in sorted((mbeir_run / "runs").rglob("*.trec")):
        assert (tmp_path / run.relative_to(mbeir_run)).read_text() == run.read_text(), run.name


def test_instructions_prompt_1_or_seeded_random(data, tmp_path):
    """prompt_1 by default; `--random-instruction` draws among the TSV's prompts, the same ones for the same seed."""
    row, table = ROWS["mbeir_webqa_task1_test"], load_instructions(data / "instructions/query_instructions.tsv")
    dids = {c["did"] for r in EVAL_ROWS for _, c in read_json_lines(r.pool_path(data))}

    def texts(rng):
        return [item.text for item in mbeir.read_row_queries(row, data, table, rng, tmp_path, dids)[0]]

    assert all(t.startswith("Retrieve passages from Wikipedia that provide answers") for t in texts(None))
    drawn = texts(random.Random(3))
    assert drawn == texts(random.Random(3)) and drawn != texts(None)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_readme_eval_command_in_reduced_precision(model_dir, data, mbeir_run, tmp_path, dtype):
    """The README's `ret2-eval-mbeir ... --dtype bfloat16` on generated data, run as a user runs it: it completes, and
    its local-pool metrics stay close to the fp32 run's (same model, data and protocol)."""
    command = [sys.executable, "-m", "eval.mbeir", "--model", str(model_dir), "--data-root", str(data), "--pool",
               "local", "--output-dir", str(tmp_path), "--dtype", dtype, "--batch-size", "8", "--num-workers", "0"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| **Average** |" in out.stdout
    reduced = json.loads((tmp_path / "results.json").read_text())["local"]
    full = json.loads((mbeir_run / "results.json").read_text())["local"]
    assert abs(reduced["average"] - full["average"]) <= 0.05
    assert len(list((tmp_path / "cache").rglob("shard-*.npy"))) > 0


def test_truncate_dim_searches_renormalised_prefixes_from_the_full_cache(mbeir_run, model_dir, data, tmp_path):
    """`--truncate-dim D`: the cached (full) pool embeddings are cut and re-normalised as loaded, the queries as
    encoded; the run ranks by those prefixes and results.json records D. The session run's cache is reused: no
    encoding of the pools."""
    from ret2.encoding import truncate_array
    from ret2.eval.encoder import EncodeOptions, Encoder

    row = ROWS["mbeir_webqa_task1_test"]
    run_mbeir(model_dir, data, tmp_path, "--pool", "local", "--tasks", "webqa_task1", "--truncate-dim", "8",
              "--cache-dir", str(mbeir_run / "cache"), "--batch-size", "4")  # fmt: skip
    assert json.loads((tmp_path / "results.json").read_text())["model"]["truncate_dim"] == 8

    options = EncodeOptions(batch_size=4, num_workers=0, device="cpu", cache_dir=mbeir_run / "cache", shard_size=5)
    full, short = (Encoder.create(model_dir, EncodeOptions(**{**vars(options), "truncate_dim": d})) for d in (None, 8))
    pool = mbeir.candidate_pool(row, data, options.cache_dir)
    full_pool, short_pool = full.pools([pool], data)[pool.name], short.pools([pool], data)[pool.name]
    documents = np.concatenate(short_pool.shards)
    np.testing.assert_array_equal(documents, truncate_array(np.concatenate(full_pool.shards), 8))
    items, _ = mbeir.read_row_queries(row, data, load_instructions(data / "instructions" / "query_instructions.tsv"),
                                      None, options.cache_dir, set(pool.ids))  # fmt: skip
    queries = short.queries(items, data, "queries")
    assert queries.shape == (len(items), 8)
    np.testing.assert_allclose(queries, truncate_array(full.queries(items, data, "queries"), 8), atol=2e-3)
    top = np.argmax(queries.astype(np.float32) @ documents.astype(np.float32).T, axis=1)
    ranked = [line.split() for line in (tmp_path / "runs" / "local" / f"{row.query_stem}.trec").read_text().splitlines()]
    firsts = [line[2] for line in ranked if line[3] == "1"]
    assert firsts == [short_pool.ids[i] for i in top]
    with pytest.raises(ValueError, match=r"truncate_dim=99 is not valid"):
        Encoder.create(model_dir, EncodeOptions(**{**vars(options), "truncate_dim": 99}))
