import json

import pytest
from transformers import AutoConfig

from ret2.demo.__main__ import main


@pytest.mark.slow
def test_demo_end_to_end_at_reduced_size(tmp_path):
    """The README's main job, small: data, both trainings, both evaluations, the saved model and both pictures."""
    summary = main([
        "--output-dir", str(tmp_path), "--num-train-epochs", "1", "--n-per-task", "6", "--n-train-per-task", "16",
        "--per-device-train-batch-size", "16", "--batch-size", "32",
    ])  # fmt: skip
    for name in ("ret2", "score_fusion"):
        for pool in ("local", "global"):
            assert 0.0 <= summary[name][pool]["average"] <= 1.0 and len(summary[name][pool]) == 17
    assert 0.0 < summary["chance_local"]["average"] < 0.5
    assert json.loads((tmp_path / "demo.json").read_text())["ret2"] == summary["ret2"]
    assert "| **Average** |" in (tmp_path / "demo.md").read_text()
    for picture in ("task_scores.png", "retrievals.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert AutoConfig.from_pretrained(tmp_path / "ret2-model", trust_remote_code=True).model_type == "ret2"
    assert (tmp_path / "ret2-model" / "processor_config.json").exists()
