import pytest

from ret2.bench.encode_raw import main


@pytest.mark.slow
def test_encode_raw_quick_runs_every_row(capsys):
    rows = main(["--quick", "--repeats", "1", "--workers", "1"])
    assert [row["path"].split(" ")[0] for row in rows] == ["tensors", "files", "fp32", "bf16"]
    assert rows[0]["ratio"] == rows[2]["ratio"] == 1.0
    assert all(row["docs_per_s"] > 0 for row in rows)
    assert "| tensors (encode_documents, preprocessed) |" in capsys.readouterr().out
