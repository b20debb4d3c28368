"""ret2.bench.recipe_cost: the projection from the GPU report's steps, and a step measured here (tiny backbone)."""

import json

import pytest

from ret2.bench.recipe_cost import REPORT, reported_steps, run
from ret2.training.recipes import RECIPES


def test_projection_from_the_gpu_report_is_the_reported_step_times_the_recipe_steps(capsys):
    rows = {row["recipe"]: row for row in run(["--cores", "1000"])}
    steps, _ = reported_steps(REPORT)
    assert set(rows) == set(RECIPES)
    for name, row in rows.items():
        step = steps["frozen" if name.endswith("frozen") else "full"]
        assert row["measured_batch"] == row["per_gpu_batch"] == step["batch"]  # measured at the recipe's batch
        assert row["step_s"] == pytest.approx(step["median_s"])
        assert row["hours"] == pytest.approx(75_000 * step["median_s"] / 3600)  # 1,000 cores: GPU-bound
        weights_and_adam = (step["total_params_m"] * 4 + step["trainable_params_m"] * 8) / 1e3
        assert row["gpu_gb"] == pytest.approx(weights_and_adam + step["peak_mem_mb"] * 2**20 / 1e9)
    assert "| ret2-mbeir-frozen | frozen | 128 (512) | 128 |" in capsys.readouterr().out


def test_a_step_measured_at_a_reduced_batch_is_scaled_to_the_recipe_batch(tmp_path):
    out = tmp_path / "cost.json"
    rows = run(["--measure", "cpu", "--size", "tiny", "--batch", "2", "--repeats", "1", "--cores", "1",
                "--json", str(out)])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and "threads" in saved["source"]
    for row in rows:
        assert row["measured_batch"] == 2 and row["per_gpu_batch"] == 128
        # the run is data-bound (longer than GPU-bound) exactly when one core cannot feed the GPUs
        assert row["gpu_hours"] > 0 and (row["cores_to_feed"] > 1) == (row["hours"] > row["gpu_hours"])
