"""The arguments of `ret2-train` as dataclasses (the command parses them with transformers' `HfArgumentParser`, beside
`TrainingArguments`): what `ret2.training.train.train` and the commands that read training data (`ret2-mine`, the
demo) take. Light to import: the commands' `--help` reads them without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ret2.data.mbeir import TRAIN_QUERIES
from ret2.options import IMAGE_ORIENTATIONS, TRAINING_FORMATS

from .recipes import RECIPES

DEFAULT_LORA_TARGETS = r".*(text_model|vision_model)\..*\.(q_proj|k_proj|v_proj|out_proj)"


@dataclass
class ModelArguments:
    model: str = field(
        metadata={"help": "A ReT-2 folder or Hub id, a CLIP / SigLIP checkpoint (new ReT-2 on its towers), or `tiny`."}
    )
    freeze_text_tower: bool = field(default=False, metadata={"help": "Freeze the text tower."})
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Freeze the vision tower."})
    lora_r: int = field(default=0, metadata={"help": "Rank of LoRA adapters on the towers; 0 = no LoRA."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA inputs."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS, metadata={"help": "Regex over module names that get LoRA adapters."}
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "Save the final model merged only, without the unmerged LoRA state used to resume."},
    )
    max_length: int | None = field(default=None, metadata={"help": "Truncate texts to this many tokens."})
    matryoshka_dims: list[int] | None = field(
        default=None,
        metadata={"help": "Matryoshka sizes, e.g. `--matryoshka_dims 768 256 64`: the loss is summed over these "
                  "prefixes of the embedding (each re-normalised); recorded in the model's config "
                  "(`matryoshka_dims`). Default: the sizes a ReT-2 `--model` was trained for, else the full "
                  "embedding only."},
    )  # fmt: skip
    config_overrides: str = field(
        default="",
        metadata={"help": "Ret2Config fields of a new model, `key=value,key=value` (e.g. `gated=false,recurrent=false,"
                  "text_layer_ids=[3]`); refused for a ReT-2 folder whose saved values differ."},
    )  # fmt: skip


@dataclass
class DataArguments:
    data_root: str | None = field(
        default=None,
        metadata={"help": "Dataset root: image paths and relative data paths are resolved against it. Alone, it "
                  "selects the M-BEIR union training files at their standard paths."},
    )  # fmt: skip
    format: str = field(default="mbeir", metadata={"help": f"Training data format, one of {list(TRAINING_FORMATS)}."})
    train_queries: str | None = field(default=None, metadata={"help": "M-BEIR training query jsonl."})
    train_pool: str | None = field(default=None, metadata={"help": "M-BEIR candidate pool jsonl of those queries."})
    m2kr_queries: str | None = field(default=None, metadata={"help": "ReT-M2KR training query jsonl."})
    m2kr_passages: str | None = field(default=None, metadata={"help": "ReT-M2KR passage jsonl."})
    image_root: str | None = field(default=None, metadata={"help": "Root of image paths (default: --data_root)."})
    instructions: str | None = field(
        default=None, metadata={"help": "M-BEIR query_instructions.tsv (default: the root's, else built-in prompts)."}
    )
    eval_queries: str | None = field(default=None, metadata={"help": "Query file to evaluate on (same format)."})
    eval_fraction: float = field(default=0.0, metadata={"help": "Hold out this fraction of the training queries."})
    num_hard_negatives: int = field(default=0, metadata={"help": "Hard negatives per query (from neg_cand_list)."})
    num_positives: int = field(
        default=1,
        metadata={"help": "Positives per query in each step (> 1: multi-positive InfoNCE over them and every in-batch "
                  "document that is one of the query's positives; docs/fine-tuning.md)."},
    )  # fmt: skip
    streaming: bool = field(default=False, metadata={"help": "Stream the query file (M-BEIR); needs --max_steps."})
    image_orientation: str = field(
        default="stored",
        metadata={"help": "How image files are read: stored (EXIF orientation not applied, as the benchmarks read "
                  "images) or upright (docs/images.md).", "choices": list(IMAGE_ORIENTATIONS)},
    )  # fmt: skip
    shuffle_buffer: int = field(default=10_000, metadata={"help": "Shuffle buffer of a streamed query file."})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Where `datasets` caches its Arrow files."})

    def query_file(self) -> Path | None:
        """The training query file these arguments select (M-BEIR: `--train-queries` or the root's union file)."""
        root = Path(self.data_root) if self.data_root else None
        if self.format == "m2kr":
            return data_path(root, self.m2kr_queries)
        return data_path(root, self.train_queries, TRAIN_QUERIES)


def data_path(root: Path | None, path: str | None, default: str | None = None) -> Path | None:
    """`path` under the data root (as given without one); `default` under the root when `path` is None."""
    if path is None:
        return root / default if root is not None and default is not None else None
    return root / path if root is not None else Path(path)


@dataclass
class RecipeArguments:
    recipe: str | None = field(
        default=None,
        metadata={"help": f"Train as the paper did: one of {list(RECIPES)} (--list-recipes shows each setting and its "
                  "source); a flag given beside it overrides the recipe's value. Recorded in recipe.json.",
                  "choices": list(RECIPES)},
    )  # fmt: skip
    stop_at_step: int | None = field(
        default=None,
        metadata={"help": "Stop (and save) at this optimizer step, the learning-rate schedule still planned for "
                  "--num_train_epochs (or --max_steps): ReT-2's runs plan 30 epochs of cosine and stop at 75k."},
    )  # fmt: skip

    def __post_init__(self):
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ValueError(f"--stop_at_step must be a positive number of steps, got {self.stop_at_step}")


@dataclass(frozen=True)
class MiningOptions:
    """Which candidates become a query's negatives (see the module docstring).

    Attributes:
        num_negatives: negatives kept per query (fewer when the filters leave fewer).
        range_min: skip the `range_min` best non-positive candidates.
        range_max: look no deeper than this rank among the non-positive candidates.
        margin: keep a candidate only if its score <= the query's lowest positive score - margin (None: off).
        max_score: keep a candidate only if its score <= this (None: off).
        same_modality: keep only candidates with the modality of one of the query's positives.
    """

    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 50
    margin: float | None = None
    max_score: float | None = None
    same_modality: bool = False

    def __post_init__(self):
        for name in ("num_negatives", "range_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.range_min, bool) or not isinstance(self.range_min, int) or self.range_min < 0:
            raise ValueError(f"range_min must be an integer >= 0, got {self.range_min!r}")
        if self.range_max <= self.range_min:
            raise ValueError(f"range_max ({self.range_max}) must be above range_min ({self.range_min})")
        for name in ("margin", "max_score"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number or None, got {value!r}")
