"""The paper's training runs as named recipes: `ret2-train --recipe ret2-mbeir` (or `ret2-mbeir-frozen`, `ret2-m2kr`,
`ret2-m2kr-frozen`) sets each published setting of that run; a flag given on the command line overrides the recipe's.

Each setting says where its value comes from: a public thread of the ReT-2 authors (the paper gives no training
table), or `PACKAGE_DEFAULT` where the threads are silent (batch size, learning rate, precision, ...). The recipe and
the value each setting ended with are written to `recipe.json` in the output folder, and the model card of a
published model shows them (`ret2.model_card.recipe_section`). Light to import: `ret2-train --help` and `--list-recipes` read it
without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ret2.options import RECIPE_FILE

PACKAGE_DEFAULT = "package default (not published)"
_THREADS = "https://github.com/aimagelab/ReT-2/issues"
BACKBONE = f"{_THREADS}/3: CLIP ViT-B/32 is the base encoder"
SCHEDULE = f"{_THREADS}/3: 30 epochs set the cosine schedule, training stops at 75k steps (as ReT-1)"
LAUNCH = f"{_THREADS}/5: the authors' training script (seed 42, torchrun, one node of 4 GPUs)"
M2KR_DATA = f"{_THREADS}/3: m2kr_up_train.jsonl, already resampled (InfoSeek down, E-VQA x2, OK-VQA x9)"
M2KR_IMAGES = f"{_THREADS}/5: the script's image root"
FROZEN = f"{_THREADS}/3: the frozen variant is the same script with the backbones frozen"
SEPARATE = f"{_THREADS}/3: M-BEIR and M2KR are trained separately"
GPUS = 4  # the published launch: one node, 4 GPUs (LAUNCH)


@dataclass(frozen=True)
class Setting:
    """One `ret2-train` flag of a recipe (underscored, as the argument dataclasses name it), its value and the source
    of that value. `under_data_root`: a path relative to `--data-root`, which the run must then give."""

    flag: str
    value: object
    source: str
    under_data_root: bool = False

    @property
    def published(self) -> bool:
        return self.source != PACKAGE_DEFAULT


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: tuple[Setting, ...]
    needs: tuple[str, ...] = ()  # flags the run must give: values no thread publishes and no default can guess

    def argv(self, data_root: str | None, given: set[str] = frozenset()) -> list[str]:
        """The recipe as command-line flags, less those in `given` (the run's own, underscored), which go after them
        and win; the recipe's paths are joined to `data_root`."""
        out = []
        for setting in self.settings:
            value = setting.value
            if setting.flag in given:
                continue
            if setting.under_data_root:
                if data_root is None:
                    raise ValueError(f"--recipe {self.name} reads {setting.flag} = {value!r} under --data-root: "
                                     f"give --data-root (or --{setting.flag.replace('_', '-')} itself)")  # fmt: skip
                value = str(Path(data_root) / value)
            values = value if isinstance(value, list) else [value]
            out += [f"--{setting.flag}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
        return out

    def check_needs(self, given: set[str]) -> None:
        """Refuses a run that lacks one of the flags (underscored) this recipe needs."""
        missing = [flag for flag in self.needs if flag not in given]
        if missing:
            raise ValueError(f"--recipe {self.name} needs " + ", ".join(f"--{f.replace('_', '-')}" for f in missing)
                             + ": no published thread gives it")  # fmt: skip

    def table(self) -> str:
        """The recipe as a markdown table: flag, value, source."""
        rows = [f"| `--{s.flag.replace('_', '-')}` | `{'DATA_ROOT/' if s.under_data_root else ''}{s.value}` | {s.source} |"
                for s in self.settings]
        needs = [f"| `--{flag.replace('_', '-')}` | (yours) | not published: the run must give it |" for flag in self.needs]
        return "\n".join(["| flag | value | source |", "|---|---|---|", *rows, *needs])


def _common(freeze: bool) -> tuple[Setting, ...]:
    """What every recipe shares: the published backbone, schedule and seed, then the package's defaults."""
    return (
        Setting("model", "openai/clip-vit-base-patch32", BACKBONE),
        Setting("seed", 42, LAUNCH),
        Setting("lr_scheduler_type", "cosine", SCHEDULE),
        Setting("num_train_epochs", 30, SCHEDULE),
        Setting("stop_at_step", 75_000, SCHEDULE),
        Setting("freeze_text_tower", freeze, FROZEN if freeze else PACKAGE_DEFAULT),
        Setting("freeze_vision_tower", freeze, FROZEN if freeze else PACKAGE_DEFAULT),
        # Not published: the package's choices. 128 pairs per GPU is the batch of the measured step behind the
        # cost table (docs/benchmarks.md); the learning rates are those of docs/fine-tuning.md.
        Setting("per_device_train_batch_size", 128, PACKAGE_DEFAULT),
        Setting("learning_rate", 1e-4 if freeze else 1e-5, PACKAGE_DEFAULT),
        Setting("warmup_steps", 0, PACKAGE_DEFAULT),
        Setting("weight_decay", 0.0, PACKAGE_DEFAULT),
        Setting("bf16", True, PACKAGE_DEFAULT),
        Setting("num_hard_negatives", 0, PACKAGE_DEFAULT),
        Setting("dataloader_drop_last", True, PACKAGE_DEFAULT),
        Setting("dataloader_num_workers", 8, PACKAGE_DEFAULT),
        Setting("logging_steps", 100, PACKAGE_DEFAULT),
        Setting("save_steps", 5_000, PACKAGE_DEFAULT),
    )


# per benchmark: what --data-root is, and the data settings
_DATA = {
    "mbeir": ("M-BEIR", "--data-root is the M-BEIR root; the union training queries against the union training pool, "
              "UniIR's instructions", ()),
    "m2kr": ("ReT-M2KR", "--data-root is the ReT-M2KR root; give --m2kr-passages, the passage file of the training "
             "queries", (Setting("m2kr_queries", "jsonl/m2kr/train/m2kr_up_train.jsonl", M2KR_DATA, under_data_root=True),
                         Setting("image_root", "images/m2kr/images", M2KR_IMAGES, under_data_root=True))),
}  # fmt: skip


def _recipe(benchmark: str, freeze: bool) -> Recipe:
    label, data_root, data = _DATA[benchmark]
    return Recipe(
        f"ret2-{benchmark}{'-frozen' if freeze else ''}",
        f"ReT-2 on {label} ({'frozen towers' if freeze else 'towers fine-tuned'}): {data_root}",
        (Setting("format", benchmark, SEPARATE), *data, *_common(freeze)),
        needs=("m2kr_passages",) if benchmark == "m2kr" else (),
    )


RECIPES = {recipe.name: recipe for recipe in (_recipe(b, f) for b in ("mbeir", "m2kr") for f in (False, True))}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"--recipe {name!r} is not a recipe; valid: {list(RECIPES)} (--list-recipes shows them)")
    return RECIPES[name]


def describe_recipes() -> str:
    """Every recipe with its table (`ret2-train --list-recipes`)."""
    parts = [f"## {recipe.name}\n\n{recipe.description}.\n\n{recipe.table()}" for recipe in RECIPES.values()]
    return "\n\n".join(parts) + f"\n\nPublished launch: torchrun --nproc_per_node {GPUS} (one node).\n"


def record(recipe: Recipe, used: dict[str, object], output_dir: str | Path) -> dict:
    """Writes `recipe.json` to `output_dir`: the recipe's name, and per setting its recipe value, the value the run
    used (different where a flag overrode it) and its source. `used`: flag -> the run's value. Returns the record."""
    settings = []
    for setting in recipe.settings:
        value = used[setting.flag]
        expected = setting.value
        if setting.under_data_root:  # recorded as the recipe names it when the run kept it
            overridden = not str(value).endswith(str(expected))
        else:
            overridden = value != expected
        settings.append({"flag": setting.flag, "recipe": expected, "used": value, "source": setting.source,
                         "published": setting.published, "overridden": overridden})  # fmt: skip
    data = {"recipe": recipe.name, "description": recipe.description, "settings": settings,
            "needs": {flag: used[flag] for flag in recipe.needs}}  # fmt: skip
    path = Path(output_dir) / RECIPE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data
