"""`ret2-convert-ret1`: convert a ReT-1 checkpoint (local folder or Hub id) into a ReT-2 folder that reproduces it.

    ret2-convert-ret1 aimagelab/ReT-CLIP-ViT-L-14 --output-dir ./ret-clip-l
    ret2-convert-ret1 ./ReT-CLIP-ViT-L-14 --output-dir ./ret-clip-l --tokenizer ./clip-l --image-processor ./clip-l

Anything that would change the computation and has no ReT-2 equivalent is refused with the field named (from
Python: `ret2.conversion.convert_ret1`; guide: docs/ret1.md).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ret2.commands._common import ArgumentParser, run_cli


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("source", help="ReT-1 folder or Hub id, e.g. aimagelab/ReT-CLIP-ViT-L-14")
    parser.add_argument("--output-dir", required=True, help="folder to write the ReT-2 model and processor to")
    parser.add_argument("--tokenizer", help="tokenizer folder or id (default: the text tower's _name_or_path)")
    parser.add_argument("--image-processor", help="image processor folder or id (default: the vision tower's)")
    return parser


def run(argv: list[str] | None = None) -> Path:
    """Parse, convert (showing the converter's progress messages), print how to load the result; returns its path."""
    args = build_parser().parse_args(argv)
    from ret2.conversion import convert_ret1

    # Show the converter's progress messages (only them: the libraries' INFO logs would drown them).
    logger = logging.getLogger("ret2.conversion")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        output = convert_ret1(args.source, args.output_dir, args.tokenizer, args.image_processor)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    print(f"Done: load it with AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True)")
    return output


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-convert-ret1`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
