"""The evaluation's run files: `write_trec` writes one TREC line per ranked document."""

import numpy as np

from ret2.eval.report import write_trec


def test_write_trec(tmp_path):
    path = tmp_path / "run.trec"
    write_trec(path, ["q1", "q2"], ["d0", "d1", "d2"], np.array([[2, 0], [1, 2]]), np.array([[0.9, 0.5], [0.7, 0.1]]), "r")
    assert path.read_text().splitlines() == [
        "q1 Q0 d2 1 0.900000 r", "q1 Q0 d0 2 0.500000 r", "q2 Q0 d1 1 0.700000 r", "q2 Q0 d2 2 0.100000 r",
    ]
