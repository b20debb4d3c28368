import json

import pytest

from configuration_ret2 import Ret2Config
from ret2.data.mbeir import EVAL_ROWS
from ret2.demo.ablation import COMPOSED, draw, group_stats, group_table, main, variants
from ret2.demo.seeds import aggregate
from ret2.training.train import parse_config_overrides


def test_variants_are_valid_overrides_of_the_tiny_default():
    models = variants("tiny")
    assert models == {"ret2": "", "one_tap": "text_layer_ids=[3],vision_layer_ids=[3]", "no_gates": "gated=false",
                      "no_recurrence": "recurrent=false"}  # fmt: skip
    for overrides in models.values():
        assert Ret2Config(**parse_config_overrides(overrides))  # each one a valid config
    assert {stem.split("_")[1] for stem in COMPOSED} == {"fashioniq", "cirr", "oven", "infoseek"} and len(COMPOSED) == 4


def _fake_run(seed: int, composed: float, other: float) -> dict:
    """Every composed row scores `composed`, every other row `other` (ReT-2; score fusion the reverse)."""
    def pool(a: float, b: float) -> dict:
        scores = {row.query_stem: {f"recall@{row.primary_k}": a if row.query_stem in COMPOSED else b}
                  for row in EVAL_ROWS}  # fmt: skip
        return {**scores, "average": (4 * a + 12 * b) / 16}

    results = {"ret2": {"local": pool(composed, other)}, "score_fusion": {"local": pool(other, composed)}}
    chance = {row.query_stem: 0.05 for row in EVAL_ROWS} | {"average": 0.05}
    return {"seed": seed, "results": results, "chance_local": chance, "seconds": 1.0}


def test_group_averages_per_seed_then_mean_and_std(tmp_path):
    runs = [_fake_run(42, 0.8, 0.4), _fake_run(1, 0.6, 0.4)]
    groups = group_stats(runs)
    ret2 = groups["ret2"]["local"]
    assert ret2["composed (4)"]["mean"] == pytest.approx(0.7)
    assert ret2["composed (4)"]["std"] == pytest.approx(0.1414, 1e-3)
    assert ret2["other (12)"]["mean"] == pytest.approx(0.4) and ret2["other (12)"]["std"] == 0.0
    assert ret2["all 16 rows"]["mean"] == pytest.approx((4 * 0.7 + 12 * 0.4) / 16)
    assert groups["score_fusion"]["local"]["other (12)"]["mean"] == pytest.approx(0.7)
    lines = group_table(groups, ("local",)).splitlines()
    assert lines[0] == "| model | local: all 16 rows | local: composed (4) | local: other (12) |"
    assert lines[2] == "| ReT-2 | 47.5 ± 3.5 | 70.0 ± 14.1 | 40.0 ± 0.0 |"
    assert lines[3] == "| score fusion | 62.5 ± 10.6 | 40.0 ± 0.0 | 70.0 ± 14.1 |"
    draw(aggregate(runs), groups, tmp_path / "ablation.png", [42, 1])
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ablation_end_to_end_at_reduced_size(tmp_path):
    """Every variant is trained, saved with its config and evaluated; the report and picture are written."""
    summary = main([
        "--output-dir", str(tmp_path), "--seeds", "5", "--num-train-epochs", "1", "--n-per-task", "4",
        "--pool-size", "12", "--n-train-per-task", "8", "--per-device-train-batch-size", "16", "--batch-size", "32",
    ])  # fmt: skip
    assert list(summary["seeds"][0]["results"]) == ["ret2", "one_tap", "no_gates", "no_recurrence", "score_fusion"]
    for name, key, value in (("one_tap", "text_layer_ids", [3]), ("no_gates", "gated", False),
                             ("no_recurrence", "recurrent", False), ("ret2", "gated", True)):  # fmt: skip
        saved = json.loads((tmp_path / "seed-5" / f"{name}-model" / "config.json").read_text())
        assert saved[key] == value
    report = (tmp_path / "ablation.md").read_text()
    assert "| no recurrence |" in report and "composed (4)" in report
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collect_merges_runs_per_seed_and_refuses_a_model_twice(tmp_path):
    """The negatives study's table from runs done in pieces (the demo's given-negatives model, one --variants run per
    mined model): each seed's models merged in folder order; a model in two folders is refused."""
    from ret2.demo.ablation import collect, negatives_variants

    assert list(negatives_variants()) == ["ret2", "mined_filtered", "mined_unfiltered", "no_negatives"]
    for name, seed, value in (("given", 1, 0.5), ("given", 2, 0.6), ("mined", 1, 0.7), ("mined", 2, 0.8)):
        run = _fake_run(seed, value, value)
        if name == "mined":
            run["results"] = {"mined_filtered": run["results"]["ret2"]}
        (tmp_path / name / f"seed-{seed}").mkdir(parents=True)
        (tmp_path / name / f"seed-{seed}" / "results.json").write_text(json.dumps(run))
    merged = collect([tmp_path / "given", tmp_path / "mined"], [1, 2])
    assert [list(s["results"]) for s in merged] == [["ret2", "score_fusion", "mined_filtered"]] * 2
    stats = aggregate(merged)
    assert stats["mined_filtered"]["local"]["average"]["mean"] == pytest.approx(0.75)
    assert merged[0]["seconds"] == 2.0
    with pytest.raises(ValueError, match=r"model\(s\) \['ret2', 'score_fusion'\] already come from an earlier folder"):
        collect([tmp_path / "given", tmp_path / "given"], [1])
    with pytest.raises(FileNotFoundError, match="run seed 3 into"):
        collect([tmp_path / "given"], [3])
