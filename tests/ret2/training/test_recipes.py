"""`ret2-train --recipe`: each recipe dry-runs on generated data (the published backbone replaced by `--model tiny`,
stopped after 2 steps) and every setting of its table reaches TrainingArguments / the model / the data as the table
says; flags beside it override it and are recorded as such in recipe.json and the model card."""

import dataclasses
import json

import pytest
from transformers import TrainingArguments

from ret2.commands.train import expand_recipe
from ret2.commands.train import run as train_cli
from ret2.data.synthetic import generate_mbeir
from ret2.model_card import recipe_section
from ret2.training.arguments import DataArguments, ModelArguments, RecipeArguments
from ret2.training.recipes import PACKAGE_DEFAULT, RECIPES, get_recipe
from ret2.training.train import train

# what a dry run changes from the recipe: the model (the published backbone needs the Hub), the batch (4 queries
# per generated ReT-M2KR file, and batches are dropped when short), the workers and the stop
DRY_RUN = {"model": "tiny", "per_device_train_batch_size": 2, "dataloader_num_workers": 0, "stop_at_step": 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_mbeir(tmp_path_factory.mktemp("data"), seed=0, n_per_task=4, pool_size=12, n_train_per_task=4,
                          image_size=32)  # fmt: skip


def _dry_run_args(name: str, root, out) -> list[str]:
    args = ["--recipe", name, "--output-dir", str(out), "--disable-tqdm", "true", "--dataloader-pin-memory", "false",
            "--report-to", "none", "--use-cpu", "true"]  # fmt: skip (bf16 on a CPU needs --use-cpu)
    if name.startswith("ret2-m2kr"):  # generated ReT-M2KR has test files only: one of them stands for the train file
        m2kr = root / "m2kr"
        args += ["--m2kr-queries", str(m2kr / "infoseek_test.jsonl"), "--image-root", str(m2kr),
                 "--m2kr-passages", str(m2kr / "infoseek_passages_test.jsonl")]  # fmt: skip
    else:
        args += ["--data-root", str(root)]
    for flag, value in DRY_RUN.items():
        args += [f"--{flag.replace('_', '-')}", str(value)]
    return args


def test_every_setting_is_a_flag_of_ret2_train():
    fields = {f.name for cls in (ModelArguments, DataArguments, RecipeArguments, TrainingArguments)
              for f in dataclasses.fields(cls)}  # fmt: skip
    for recipe in RECIPES.values():
        for flag in [s.flag for s in recipe.settings] + list(recipe.needs):
            assert flag in fields, (recipe.name, flag)
        published = {s.flag for s in recipe.settings if s.source != PACKAGE_DEFAULT}
        assert {"model", "seed", "num_train_epochs", "stop_at_step", "lr_scheduler_type", "format"} <= published


@pytest.mark.parametrize("name", list(RECIPES))
def test_dry_run_sets_every_published_setting(name, root, tmp_path):
    recipe = get_recipe(name)
    trainer = train_cli(_dry_run_args(name, root, tmp_path / "run"))
    args, config = trainer.args, trainer.model.config
    used = {**vars(args), "freeze_text_tower": config.freeze_text_tower, "freeze_vision_tower":
            config.freeze_vision_tower, "num_hard_negatives": trainer.data_collator.num_hard_negatives}  # fmt: skip
    for setting in recipe.settings:
        if setting.flag in DRY_RUN or setting.flag in ("format", "m2kr_queries", "image_root"):
            continue
        value = used[setting.flag]
        assert value == setting.value or getattr(value, "value", None) == setting.value, (setting, value)
    assert (config.freeze_text_tower, config.freeze_vision_tower) == (name.endswith("frozen"),) * 2
    assert args.seed == 42 and args.max_steps == -1 and args.num_train_epochs == 30
    # stopped at step 2 while the cosine schedule stays planned for 30 epochs
    steps_per_epoch = len(trainer.get_train_dataloader())
    assert trainer.state.global_step == 2 and trainer.state.max_steps == 30 * steps_per_epoch > 2
    assert trainer.lr_scheduler.get_last_lr()[0] < args.learning_rate  # the cosine decay has begun

    recorded = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recorded["recipe"] == name
    assert {s["flag"]: s["used"] for s in recorded["settings"]}["format"] == name.split("-")[1]
    overridden = {s["flag"] for s in recorded["settings"] if s["overridden"]}
    own_files = {"m2kr_queries", "image_root"} if name.startswith("ret2-m2kr") else set()
    assert overridden == set(DRY_RUN) | own_files, overridden
    section = "\n".join(recipe_section(recorded))
    assert f"--recipe {name}" in section and "`tiny` (recipe: `openai/clip-vit-base-patch32`)" in section
    assert "*not published*" in section and "https://github.com/aimagelab/ReT-2/issues/3" in section


def test_m2kr_recipe_reads_under_the_data_root_and_needs_the_passages(tmp_path):
    argv = expand_recipe(["--recipe", "ret2-m2kr", "--data-root", "/data/ReT-M2KR", "--learning-rate", "3e-5",
                          "--m2kr-passages", "p.jsonl"])  # fmt: skip
    assert argv[argv.index("--m2kr-queries") + 1] == "/data/ReT-M2KR/jsonl/m2kr/train/m2kr_up_train.jsonl"
    assert argv[argv.index("--image-root") + 1] == "/data/ReT-M2KR/images/m2kr/images"
    assert argv.count("--learning-rate") == 1 and argv[argv.index("--learning-rate") + 1] == "3e-5"  # the run's own
    with pytest.raises(ValueError, match="--recipe ret2-m2kr needs --m2kr-passages"):
        train_cli(["--recipe", "ret2-m2kr", "--data-root", str(tmp_path), "--output-dir", str(tmp_path / "run"),
                   "--model", "tiny"])  # fmt: skip
    with pytest.raises(ValueError, match="give --data-root"):
        expand_recipe(["--recipe", "ret2-m2kr-frozen", "--m2kr-passages", "p.jsonl"])
    with pytest.raises(ValueError, match="--recipe ret2-m2kr-frozen needs --m2kr-passages"):  # the API refuses too
        train(ModelArguments(model="tiny"), DataArguments(format="m2kr", data_root=str(tmp_path)),
              TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True),
              recipe_args=RecipeArguments(recipe="ret2-m2kr-frozen"))  # fmt: skip
    with pytest.raises(ValueError, match="not a recipe; valid"):
        expand_recipe(["--recipe", "ret2-mbier"])


def test_list_recipes_prints_each_table(capsys):
    with pytest.raises(SystemExit) as done:
        train_cli(["--list-recipes"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in RECIPES:
        assert f"## {name}" in out
    assert "| `--stop-at-step` | `75000` |" in out and "torchrun --nproc_per_node 4" in out
