"""`ret2-publish` (`python hub_upload.py` in a checkout): publish a ReT-2 model to the Hugging Face Hub as a
`trust_remote_code` repository.

    ret2-publish --model runs/ret2/checkpoint-500 --repo-id my-org/ret2-clip-b --dry-run staged/
    ret2-publish --model runs/lora --base runs/ret2 --repo-id my-org/ret2-lora --eval-results results.json
    ret2-publish --from-ret1 <ReT-1 checkpoint> --repo-id my-org/ret1-as-ret2

(from Python: `ret2.publish.publish(model, repo_id, ...)`.)

The model (a `save_pretrained` folder, a Trainer `checkpoint-N/`, or a LoRA adapter merged into its base) is
re-saved with `save_pretrained` into a flat folder: config with `auto_map`, safetensors weights, the remote-code files,
the processor, and a model card. That folder is loaded in a clean process the way a Hub user loads it (our packages
not importable, offline) and must give the source model's embeddings; only then are the repository (and branch)
created and the folder uploaded. The token comes from `HF_TOKEN` or `hf auth login`; it is never printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ret2.commands._common import ArgumentParser, configure_logging, run_cli
from ret2.commands.flags import add_model

if TYPE_CHECKING:
    from huggingface_hub import HfApi


def repo_id_arg(value: str) -> str:
    """argparse type of `--repo-id`: `ret2.publish.check_repo_id`."""
    from ret2.publish import check_repo_id

    try:
        return check_repo_id(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def hub_id_arg(value: str) -> str:
    """argparse type of `--base-model`: `ret2.publish.check_hub_model_id`."""
    from ret2.publish import check_hub_model_id

    try:
        return check_hub_model_id(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    add_model(source, help="a ReT-2 folder saved by save_pretrained (model + processor), a Trainer checkpoint-N/ folder "
              "(its optimizer, scheduler, RNG and trainer state are not published) or a LoRA adapter folder (merged "
              "into --base)")  # fmt: skip
    source.add_argument(
        "--from-ret1", metavar="SRC",
        help="convert an official ReT-1 checkpoint (ret2.conversion.convert_ret1) and publish the result",
    )  # fmt: skip
    parser.add_argument(
        "--base", metavar="DIR",
        help="base ReT-2 model (folder or Hub id) of a LoRA adapter; default: the adapter's base_model_name_or_path",
    )  # fmt: skip
    parser.add_argument("--repo-id", required=True, type=repo_id_arg, metavar="ORG/NAME", help="target repository")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default="main", help="branch to push to, created if needed (default: main)")
    parser.add_argument("--commit-message", default="Upload ReT-2 model", help="commit message of the upload")
    parser.add_argument(
        "--eval-results", type=Path, metavar="JSON",
        help="results.json of the eval scripts (nested metrics as fractions), rendered as tables in the model card",
    )  # fmt: skip
    parser.add_argument(
        "--ignore-results-model", action="store_true",
        help="publish --eval-results even if it was measured on another model (its fingerprint differs) or names none",
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer", metavar="DIR",
        help="with --from-ret1: the towers' tokenizer (folder or Hub id; default: the text tower's _name_or_path)",
    )  # fmt: skip
    parser.add_argument(
        "--image-processor", metavar="DIR",
        help="with --from-ret1: the vision tower's image processor (folder or Hub id; default: its _name_or_path)",
    )  # fmt: skip
    parser.add_argument(
        "--datasets", nargs="+", metavar="ID",
        help="Hub dataset ids for the card metadata; default: the benchmarks named in --eval-results",
    )  # fmt: skip
    parser.add_argument("--license", default="apache-2.0", help="license id in the card metadata (default: apache-2.0)")
    parser.add_argument(
        "--base-model", nargs="+", type=hub_id_arg, metavar="ID",
        help="Hub ids of the model(s) this one derives from; default: the towers' _name_or_path when it is a Hub id",
    )  # fmt: skip
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="load pickle weights (.bin/.pt/.pth/.pkl) of a trusted checkpoint; they are published as safetensors",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", type=Path, metavar="OUTDIR",
        help="assemble and verify the repository in OUTDIR (new or empty) and upload nothing",
    )  # fmt: skip
    return parser


def run(argv: list[str] | None = None, api: HfApi | None = None) -> int:
    """Parse and publish; `api` replaces `HfApi()` (tests). Returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging()  # the steps' log lines on stderr
    from ret2.publish import PublishError, publish, redact

    try:
        done = publish(
            None if args.model is None else Path(args.model), args.repo_id, from_ret1=args.from_ret1, base=args.base,
            private=args.private, revision=args.revision, commit_message=args.commit_message,
            eval_results=args.eval_results, ignore_results_model=args.ignore_results_model, datasets=args.datasets,
            license=args.license, base_model=args.base_model, allow_pickle=args.allow_pickle, dry_run=args.dry_run,
            tokenizer=args.tokenizer, image_processor=args.image_processor, api=api,
        )  # fmt: skip
    except PublishError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        if error.staging is not None and error.staging.is_dir() and any(error.staging.iterdir()):
            print(f"the assembled folder is kept at {error.staging.resolve()}", file=sys.stderr)
        return 1
    if done.commit_url is None:
        print(f"dry run: the repository is assembled in {done.folder.resolve()}; nothing was uploaded.")
    else:
        print(f"uploaded: {done.commit_url}\npin it in from_pretrained: revision={done.revision!r}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-publish`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
