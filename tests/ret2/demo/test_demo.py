import json
import re
import sys

import pytest
import processes
from transformers import AutoConfig

from ret2.data.mbeir import EVAL_ROWS
from ret2.commands.demo import run as main
from ret2.demo.seeds import aggregate, mean_chance, row_table, seed_table


@pytest.mark.slow
def test_demo_end_to_end_at_reduced_size(tmp_path):
    """The README's main job, small and at one seed: data, both trainings, both evaluations, the saved model, the
    table and both pictures."""
    summary = main([
        "--output-dir", str(tmp_path), "--seeds", "3", "--num-train-epochs", "1", "--n-per-task", "6",
        "--pool-size", "20", "--n-train-per-task", "16", "--per-device-train-batch-size", "16", "--batch-size", "32",
    ])  # fmt: skip
    (run,) = summary["seeds"]
    assert run["seed"] == 3 and summary["jobs"] == 1
    for name in ("ret2", "score_fusion"):
        for pool in ("local", "global"):
            assert 0.0 <= run["results"][name][pool]["average"] <= 1.0 and len(run["results"][name][pool]) == 17
            average = summary["aggregate"][name][pool]["average"]
            assert average["mean"] == run["results"][name][pool]["average"] and average["std"] == 0.0
    assert 0.0 < summary["chance_local"]["average"] < 0.5
    assert json.loads((tmp_path / "demo.json").read_text())["seeds"][0]["results"] == run["results"]
    assert json.loads((tmp_path / "seed-3" / "results.json").read_text())["results"] == run["results"]
    assert "| **Average** |" in (tmp_path / "demo.md").read_text()
    for picture in ("task_scores.png", "retrievals.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model_dir = tmp_path / "seed-3" / "ret2-model"
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    assert config.model_type == "ret2"
    assert (config.input_gate_bias_prior, config.forget_gate_bias_prior) == (2.0, 2.0)  # the recipe's near-open gates
    assert (model_dir / "processor_config.json").exists()


def _fake_run(seed: int, ret2: float, baseline: float, chance: float = 0.05) -> dict:
    """A run_seed summary whose every row scores `ret2` / `baseline` locally and half that globally."""
    results = {}
    for name, score in (("ret2", ret2), ("score_fusion", baseline)):
        results[name] = {
            pool: {
                **{row.query_stem: {f"recall@{row.primary_k}": score * factor, "recall@1": 0.0} for row in EVAL_ROWS},
                "average": score * factor,
            }
            for pool, factor in (("local", 1.0), ("global", 0.5))
        }  # fmt: skip
    chance_local = {row.query_stem: chance for row in EVAL_ROWS} | {"average": chance}
    return {"seed": seed, "results": results, "chance_local": chance_local, "seconds": 10.0 * seed}


def test_aggregate_gives_mean_sample_std_min_max_per_row_and_pool():
    runs = [_fake_run(42, 0.8, 0.6, 0.04), _fake_run(1, 0.6, 0.7, 0.06), _fake_run(2, 0.7, 0.5, 0.05)]
    stats = aggregate(runs)
    fiq = stats["ret2"]["local"]["mbeir_fashioniq_task7_test"]  # primary metric recall@10, not recall@1
    assert fiq["mean"] == pytest.approx(0.7) and fiq["std"] == pytest.approx(0.1)
    assert (fiq["min"], fiq["max"], fiq["n"]) == (0.6, 0.8, 3)
    sf_global = stats["score_fusion"]["global"]["average"]
    assert sf_global["mean"] == pytest.approx(0.3) and sf_global["std"] == pytest.approx(0.05)
    assert set(stats["ret2"]["local"]) == {row.query_stem for row in EVAL_ROWS} | {"average"}
    assert mean_chance(runs)["average"] == pytest.approx(0.05)


def test_tables_show_mean_and_std_per_row_and_each_seed():
    runs = [_fake_run(42, 0.8, 0.6), _fake_run(1, 0.6, 0.7)]
    table = row_table(aggregate(runs), mean_chance(runs))
    lines = table.splitlines()
    assert lines[0] == ("| Row | Metric | chance (local) | ReT-2 local | ReT-2 global | SF local | SF global |")
    assert lines[2] == "| VisualNews (t->i) | R@5 | 5.0 | 70.0 ± 14.1 | 35.0 ± 7.1 | 65.0 ± 7.1 | 32.5 ± 3.5 |"
    average = "| **Average** | | 5.0 | **70.0 ± 14.1** | **35.0 ± 7.1** | **65.0 ± 7.1** | **32.5 ± 3.5** |"
    assert lines[-1] == average
    assert len(lines) == 2 + len(EVAL_ROWS) + 1
    one_seed = row_table(aggregate(runs[:1]), mean_chance(runs[:1])).splitlines()
    assert one_seed[-1] == "| **Average** | | 5.0 | **80.0** | **40.0** | **60.0** | **30.0** |"
    assert seed_table(runs).splitlines()[2:] == ["| 42 | 80.0 | 40.0 | 60.0 | 30.0 | 420 |",
                                                 "| 1 | 60.0 | 30.0 | 70.0 | 35.0 | 10 |"]  # fmt: skip


@pytest.mark.slow
def test_a_seed_gives_the_same_results_alone_in_process_and_beside_another_in_a_worker(tmp_path):
    """Each seed runs independently on one torch thread: `--jobs 2` (worker processes, started here as the user does,
    from a new process) reproduces `--jobs 1`. The workers' output goes to their logs, and their progress (stage,
    model, training step, seed) to the terminal while they run."""
    small = ["--num-train-epochs", "1", "--n-per-task", "4", "--pool-size", "12", "--n-train-per-task", "8",
             "--per-device-train-batch-size", "16", "--batch-size", "32", "--no-baseline"]  # fmt: skip
    alone = main(["--output-dir", str(tmp_path / "alone"), "--seeds", "3", "--jobs", "1", *small])
    run = processes.run([sys.executable, "-m", "ret2.demo", "--output-dir", tmp_path / "both", "--seeds", "4", "3",
                         "--jobs", "2", *small], timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr
    both = json.loads((tmp_path / "both" / "demo.json").read_text())
    assert [summary["seed"] for summary in both["seeds"]] == [4, 3]
    assert both["seeds"][1]["results"] == alone["seeds"][0]["results"]
    steps = 16 * 8 // 16  # 16 rows x 8 training queries, in batches of 16, one epoch
    for seed in (4, 3):
        lines = [re.sub(r" \(\d+ s\)$", "", line)  # the seconds since the seed started
                 for line in run.stderr.splitlines() if line.startswith(f"[seed {seed}]")]  # fmt: skip
        assert lines[0] == f"[seed {seed}] generating the data in {tmp_path / 'both' / f'seed-{seed}' / 'data'}"
        assert lines[1] == f"[seed {seed}] fine-tuning ret2"
        assert [line.split(",")[0] for line in lines[2:-1]] == [
            f"[seed {seed}] fine-tuning ret2: step {step}/{steps}" for step in (2, 4, 6, 8)]
        assert lines[-1] == f"[seed {seed}] evaluating ret2 on the local and global pools"
        log = (tmp_path / "both" / f"seed-{seed}" / "log.txt").read_text()
        assert log.count(f"[seed {seed}] fine-tuning ret2: step {steps}/{steps}") == 1
