"""`ret2-rag`: print the prompt for a question (and image) against a knowledge-base index; the first call builds the
knowledge base from ReT-M2KR passage files (`--passages`), later calls reuse it.

    ret2-rag kb-index --passages data/ReT-M2KR/infoseek_passages_test.jsonl \\
        --model runs/demo/seed-42/ret2-model --question "What is this building called?" --image photo.jpg -k 5
    ret2-rag kb-index --question "Who designed it?" --image photo.jpg
    ret2-rag kb-index --question "Who designed it?" --image photo.jpg --mode hybrid \\
        --filter '{"source": "infoseek_passages_test"}'

(from Python: `ret2.rag.build_knowledge_base`, `retrieve`, `build_prompt`.)
"""

from __future__ import annotations

from pathlib import Path

from ret2.commands._common import ArgumentParser, run_cli
from ret2.commands.flags import add_chunking, add_model, add_search_modes


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("index", help="the knowledge-base index folder (built by the first call, with --passages)")
    parser.add_argument("--passages", nargs="+", metavar="FILE",
                        help="ReT-M2KR passage files (passage_id, passage_text, passage_image_path) to build the "
                             "knowledge base from, into the new INDEX folder (needs --model)")  # fmt: skip
    parser.add_argument("--image-root", help="folder the passages' image paths are relative to (default: the folder "
                        "of the first passage file, the ReT-M2KR root)")  # fmt: skip
    parser.add_argument("--question", required=True, help="the question")
    parser.add_argument("--image", help="the question's image (a path anywhere on disk)")
    parser.add_argument("-k", "--k", type=int, default=5, help="passages in the prompt")
    add_search_modes(parser)
    add_model(parser, help="the model (default: the one that built the index)")
    add_chunking(parser, default="auto", overlap=16, what="passages (with --passages)")
    return parser


def run(argv: list[str] | None = None) -> str:
    """Parse, build or open the knowledge base, print the prompt and return it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_root and not args.passages:
        parser.error("--image-root is for --passages (the knowledge base's own image root is stored in it)")
    if args.passages and args.model is None:
        parser.error("--passages builds a new knowledge base: give the model that encodes it with --model")
    from ret2.rag import build_knowledge_base, build_prompt, retrieve

    if args.passages:
        image_root = args.image_root or Path(args.passages[0]).parent
        index = build_knowledge_base(args.index, args.passages, args.model, image_root, args.chunk_size,
                                     args.chunk_overlap)  # fmt: skip
    else:
        from ret2.index import Ret2Index

        index = Ret2Index.open(args.index, args.model)
    passages = retrieve(index, args.question, args.image, args.k, filter=args.filter, mode=args.mode,
                        fusion=args.fusion, weights=args.weights)  # fmt: skip
    prompt = build_prompt(args.question, passages)
    print(prompt)
    return prompt


def main(argv: list[str] | None = None) -> None:
    """The installed `ret2-rag`."""
    run_cli(run, argv)


if __name__ == "__main__":
    main()
