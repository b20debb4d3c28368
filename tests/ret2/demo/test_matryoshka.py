"""`python -m ret2.demo.matryoshka`: its default sizes, its table of what each size keeps, and its refusal of a
reference folder without the demo's runs (the runs themselves take minutes: docs/benchmarks.md#matryoshka-sizes)."""

import pytest

from ret2.demo.matryoshka import MATRYOSHKA, PLAIN, default_dims, parse_args, size_table


def test_default_dims_halve_down_to_an_eighth():
    assert default_dims(32) == [32, 16, 8, 4] and default_dims(768) == [768, 384, 192, 96] and default_dims(2) == [2, 1]


def test_size_table_gives_mean_std_and_the_share_of_full_size():
    def run(seed, plain, short):
        return {"seed": seed, "results": {PLAIN: {8: {"local": plain, "global": plain}, 4: {"local": short, "global": 0.2}},
                                          MATRYOSHKA: {8: {"local": 0.5, "global": 0.5}, 4: {"local": 0.5, "global": 0.25}}}}
    table = size_table([run(42, 0.6, 0.3), run(1, 0.4, 0.3)], [8, 4]).splitlines()
    assert table[2] == "| ReT-2 (demo, full size only) | 8 | 50.0 ± 14.1 | 50.0 ± 14.1 | 1.000 | 1.000 |"
    # shares are averaged per seed: (0.3 / 0.6 + 0.3 / 0.4) / 2 = 0.625, (0.2 / 0.6 + 0.2 / 0.4) / 2 = 0.417
    assert table[3] == "| ReT-2 (demo, full size only) | 4 | 30.0 ± 0.0 | 20.0 ± 0.0 | 0.625 | 0.417 |"
    assert table[5] == "| ReT-2 + Matryoshka loss | 4 | 50.0 ± 0.0 | 25.0 ± 0.0 | 1.000 | 0.500 |"


def test_a_reference_without_the_demo_runs_is_named(tmp_path, capsys):
    (tmp_path / "seed-42" / "data").mkdir(parents=True)
    with pytest.raises(SystemExit):
        parse_args(["--reference", str(tmp_path), "--seeds", "42"])
    assert f"--reference {tmp_path} has no seed-42/ret2-model: run `python -m ret2.demo" in capsys.readouterr().err
