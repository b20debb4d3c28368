import pytest

from ret2.bench.encode_raw import main


@pytest.mark.slow
def test_encode_raw_quick_runs_every_row(capsys):
    rows = main(["--quick", "--repeats", "1", "--workers", "1"])
    assert [row["path"].split(" ")[0] for row in rows] == ["tensors", "files", "fp32", "bf16"]
    assert rows[0]["ratio"] == rows[2]["ratio"] == 1.0
    assert all(row["docs_per_s"] > 0 for row in rows)
    assert "| tensors (encode_documents, preprocessed) |" in capsys.readouterr().out


def test_sorting_bench_quick_runs_and_both_orders_agree(capsys):
    """`python -m ret2.bench.sorting --quick`: both rows, and the sorted engine gives the input-order embeddings."""
    from ret2.bench.sorting import main as sorting

    rows = sorting(["--quick", "--repeats", "1"])
    assert [row["order"].split()[0] for row in rows] == ["sorted", "input"]
    assert all(row["docs_per_s"] > 0 for row in rows) and rows[1]["speedup"] == 1.0
    header = capsys.readouterr().out.splitlines()[0]
    assert float(header.rsplit(" ", 1)[1]) < 1e-5  # largest embedding difference between the two orders
