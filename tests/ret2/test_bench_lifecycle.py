"""ret2.bench.lifecycle on a small index: the deletions it times are the ones the index then holds, compaction
removes them, and the upsert replaces what it was given."""

from ret2.bench.lifecycle import run, tables


def test_the_lifecycle_benchmark_deletes_compacts_and_upserts_what_it_reports(tmp_path):
    result = run(3000, nlist=16, pq_m=96, upsert=20, num_queries=4, repeats=1, folder=tmp_path)
    states = [(r["state"], r["rows"], r["deleted_rows"]) for r in result["rows"]]
    assert states == [("none deleted", 3000, 0), ("1% deleted, pending", 3000, 30),
                      ("10% deleted, pending", 3000, 300), ("compacted", 2700, 0)]  # fmt: skip
    assert 0 < result["rows"][-1]["recall_at_10"] <= 1
    assert result["upsert"]["counts"] == {"added": 0, "replaced": 20, "unchanged": 0}
    assert "| compacted | compact (300 rows removed) |" in tables(result)
