"""The shared flag groups (`ret2.commands.flags`): every command that takes one of their flags spells it the same way,
with the same type, choices, help and default (or one of the group's named defaults, where the commands' documented
defaults differ); and the light constants the parsers list agree with the library that acts on them."""

import argparse
import importlib
from dataclasses import fields

import pytest
from conftest import COMMANDS

from ret2.commands import flags
from ret2.options import DTYPE_NAMES, FUSIONS, IMAGE_ORIENTATIONS, PRECISIONS, RESCORE_MULTIPLIER, SEARCH_MODES

# Flags of the same spelling outside the groups: `ret2-index train --batch-size` is a training batch (pairs per step),
# not items per model call; `ret2-bench --device` defaults to the suite's device (cuda for the gpu suite).
NOT_THE_GROUP = {("--batch-size", "ret2.commands.index train"), ("--device", "ret2.commands.bench")}


def parsers_of(module: str, monkeypatch) -> list[argparse.ArgumentParser]:
    """Every parser (sub-commands included) that `module`'s `main(["--help"])` builds."""
    parsers, init = [], argparse.ArgumentParser.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        parsers.append(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "__init__", recording_init)
        with pytest.raises(SystemExit):
            importlib.import_module(module).main(["--help"])
    return parsers


@pytest.fixture(scope="module")
def actions() -> dict[str, list[tuple[str, str, argparse.Action]]]:
    """flag -> [(where: the command module and sub-command, action)] over every installed command."""
    found: dict[str, list] = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for module in sorted(COMMANDS.values()):
            parsers = parsers_of(module, monkeypatch)
            for parser in parsers:
                where = module + parser.prog[len(parsers[0].prog):]  # "ret2.commands.index build"
                for action in parser._actions:
                    for flag in action.option_strings:
                        found.setdefault(flag, []).append((where, action))
    return found


def uses(actions, flag: str) -> list[tuple[str, argparse.Action]]:
    found = [(where, action) for where, action in actions.get(flag, []) if (flag, where) not in NOT_THE_GROUP]
    assert found, f"no command takes {flag}"
    return found


def check(actions, flag: str, *, type=None, choices=None, defaults=(None,), same_help: bool = True,
          commands_at_least: int = 2) -> None:  # fmt: skip
    """Every use of `flag`: this type and choices, a default among `defaults`, and (`same_help`) one help text per
    default."""
    found = uses(actions, flag)
    assert len({where.split()[0] for where, _ in found}) >= commands_at_least, (flag, [w for w, _ in found])
    helps = {}
    for where, action in found:
        assert (action.type or str) is (type or str), (flag, where, action.type)
        assert (None if action.choices is None else list(action.choices)) == choices, (flag, where, action.choices)
        assert action.default in defaults, (flag, where, action.default)
        if same_help:
            helps.setdefault(action.default, set()).add(action.help)
    assert all(len(texts) == 1 for texts in helps.values()), (flag, helps)


def test_model_group(actions):
    check(actions, "--model", defaults=flags.MODEL_DEFAULTS, same_help=False, commands_at_least=8)  # help: its role


def test_device_group(actions):
    check(actions, "--device", commands_at_least=5)


def test_encoding_group(actions):
    check(actions, "--batch-size", type=int, defaults=(flags.BATCH_SIZE,), commands_at_least=5)
    check(actions, "--dtype", choices=list(DTYPE_NAMES), defaults=(flags.DTYPE,), commands_at_least=3)


def test_image_orientation_group(actions):
    """Benchmark data reads images stored (ret2-eval-*, ret2-train, ret2-mine), your own collection upright
    (ret2-index); `ret2-train`'s flag comes from its dataclass (its help says the same in its own words)."""
    argparse_uses = [(w, a) for w, a in uses(actions, "--image-orientation") if "commands.train" not in w]
    check(actions, "--image-orientation", choices=list(IMAGE_ORIENTATIONS), defaults=tuple(flags.ORIENTATION_HELP),
          same_help=False, commands_at_least=4)  # fmt: skip
    for where, action in argparse_uses:
        assert action.help.startswith(flags.ORIENTATION_HELP[action.default]), where
    (train,) = [a for w, a in uses(actions, "--image-orientation") if "commands.train" in w]
    assert train.default == "stored"


def test_chunking_group(actions):
    """`--chunk-size` takes a number, auto or none wherever it appears (it was an int only in ret2-index)."""
    check(actions, "--chunk-size", type=flags.chunk_size, defaults=flags.CHUNK_DEFAULTS, same_help=False)
    check(actions, "--chunk-overlap", type=int, defaults=flags.CHUNK_OVERLAPS)
    assert [flags.chunk_size(text) for text in ("auto", "NONE", "128")] == ["auto", None, 128]
    for bad in ("0", "-3", "1.5", "big"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer, auto or none"):
            flags.chunk_size(bad)


def test_precision_group(actions):
    check(actions, "--precision", choices=list(PRECISIONS), defaults=flags.PRECISION_DEFAULTS, same_help=False)
    check(actions, "--rescore-multiplier", type=int, defaults=(RESCORE_MULTIPLIER, None), same_help=False)
    for where, action in uses(actions, "--rescore-multiplier"):
        assert action.help.startswith(flags.RESCORE_HELP), where


def test_the_groups_refuse_a_default_they_do_not_name():
    parser = argparse.ArgumentParser()
    for add, kwargs in ((flags.add_image_orientation, {"default": "rotated"}), (flags.add_precision, {"default": "fp8"}),
                        (flags.add_chunking, {"default": 64, "overlap": 0}), (flags.add_model, {"help": "m", "default": "big"}),
                        (flags.add_rescore, {"default": 3})):  # fmt: skip
        with pytest.raises(ValueError, match="(is|are) not"):
            add(parser, **kwargs)


def test_light_constants_agree_with_the_library():
    """What the parsers list without importing torch is what the library checks."""
    from modeling_ret2 import processing_ret2

    from ret2.bench.suites import SUITES
    from ret2.commands.bench import SUITE_NAMES
    from ret2.commands.eval_mbeir import build_parser
    from ret2.eval.encoder import EncodeOptions

    assert IMAGE_ORIENTATIONS == processing_ret2.IMAGE_ORIENTATIONS
    assert sorted(SUITE_NAMES) == sorted(SUITES)
    args = build_parser().parse_args(["--model", "m", "--data-root", "d", "--output-dir", "o"])
    assert {f.name: getattr(args, f.name) for f in fields(EncodeOptions)} == vars(EncodeOptions())


def test_search_modes_group(actions):
    """`ret2-index search` and `ret2-rag` take the same `--filter` (JSON), `--mode`, `--fusion` and `--weights`."""
    check(actions, "--filter", type=flags.json_filter)
    check(actions, "--mode", choices=list(SEARCH_MODES), defaults=("vector",))
    check(actions, "--fusion", choices=list(FUSIONS), defaults=("rrf",))
    check(actions, "--weights", type=float, defaults=((0.5, 0.5),))
    assert flags.json_filter('{"year": {"$gte": 2020}}') == {"year": {"$gte": 2020}}
    with pytest.raises(argparse.ArgumentTypeError, match=r"--filter is not JSON .* \"{'album': 'trip'}\""):
        flags.json_filter("{'album': 'trip'}")
