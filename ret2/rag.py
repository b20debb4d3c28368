"""Retrieval-augmented generation with ReT-2, the paper's downstream use: a question about an image retrieves
passages from a knowledge base, and the passages and the question become the prompt of any generator (an LLM or a
multimodal LLM: this module stops at the prompt string).

    from ret2.rag import build_knowledge_base, retrieve, build_prompt

    kb = build_knowledge_base("kb-index", ["data/ReT-M2KR/infoseek_passages_test.jsonl"],  # with or without images
                              model="runs/demo/seed-42/ret2-model", image_root="data/ReT-M2KR")
    passages = retrieve(kb, "What is this building called?", image="photo.jpg", k=5)
    prompt = build_prompt("What is this building called?", passages)   # hand it, with the image, to any generator

The knowledge base is a `ret2.index.Ret2Index` of ReT-M2KR passage files (`passage_id`, `passage_text`,
`passage_image_path`: the layout `eval.m2kr` reads and `ret2.data.synthetic.generate_mbeir` writes under `<root>/m2kr`).
Command line: the first call builds the knowledge base from the passage files, later calls reuse it; each prints the
prompt.

    python -m ret2.rag kb-index --passages data/ReT-M2KR/infoseek_passages_test.jsonl \
        --model runs/demo/seed-42/ret2-model --question "What is this building called?" --image photo.jpg -k 5
    python -m ret2.rag kb-index --question "Who designed it?" --image photo.jpg
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ret2.data.m2kr import read_ret_m2kr_passages

if TYPE_CHECKING:  # the index is imported where it is used: the command's --help stays light
    from ret2.index import Hit, Ret2Index

PROMPT_TEMPLATE = (
    "Answer the question about the image using the passages below. If they do not contain the answer, say so.\n\n"
    "{passages}\n\nQuestion: {question}\nAnswer:"
)


def passage_records(files: Sequence[str | Path]) -> list[dict]:
    """Index records {"id", "text", "image"} of ReT-M2KR passage files (ids as strings, null texts dropped)."""
    return [{"id": p["pid"], "text": p["text"] or None, "image": p["img_path"]}
            for path in files for p in read_ret_m2kr_passages(path)]  # fmt: skip


def build_knowledge_base(
    folder: str | Path, passage_files: Sequence[str | Path], model: str | Path, image_root: str | Path,
    chunk_size: int | str | None = "auto", chunk_overlap: int = 16, **build: Any,
) -> Ret2Index:
    """A `Ret2Index` at `folder` of the passages of ReT-M2KR passage files (images relative to `image_root`).
    Passages longer than the tokenizer's limit (77 tokens for CLIP; Wikipedia paragraphs often are) are split into
    chunks of `chunk_size` tokens ("auto": the limit) overlapping by `chunk_overlap`, and a passage is retrieved by
    its best chunk, instead of being truncated; `chunk_size=None` truncates. `**build`: more `Ret2Index.build`
    arguments (batch_size, device, ...)."""
    from ret2.index import Ret2Index

    return Ret2Index.build(folder, passage_records(passage_files), model, image_root=image_root,
                           chunk_size=chunk_size, chunk_overlap=chunk_overlap, **build)  # fmt: skip


def retrieve(index: Ret2Index, question: str | None, image: Any = None, k: int = 5) -> list[Hit]:
    """The top-k passages for a question (text) about an image (a PIL image or a path anywhere on disk); either may
    be None."""
    return index.search({"text": question, "image": image}, k=k)


def build_prompt(question: str, passages: Sequence[Hit], template: str = PROMPT_TEMPLATE) -> str:
    """The generator's prompt: the passages, numbered best first (an image passage names its image file; a chunked
    one gives its best chunk), and the question. `template` has `{passages}` and `{question}` fields."""
    lines = []
    for rank, hit in enumerate(passages, 1):
        image = f" [image: {hit.image}]" if hit.image else ""
        lines.append(f"Passage {rank} ({hit.id}){image}: {hit.text or ''}".rstrip())
    return template.format(passages="\n".join(lines), question=question)


def _chunk_size(text: str) -> int | str | None:
    """`--chunk-size`: a number of tokens, "auto" or "none"."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--chunk-size must be a positive integer, auto or none, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    """`python -m ret2.rag`: print the prompt for a question (and image) against a knowledge-base index."""
    from ret2.cli import ArgumentParser

    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="the knowledge-base index folder (built by the first call, with --passages)")
    parser.add_argument("--passages", nargs="+", metavar="FILE",
                        help="ReT-M2KR passage files (passage_id, passage_text, passage_image_path) to build the "
                             "knowledge base from, into the new INDEX folder (needs --model)")  # fmt: skip
    parser.add_argument("--image-root", help="folder the passages' image paths are relative to (default: the folder "
                        "of the first passage file, the ReT-M2KR root)")  # fmt: skip
    parser.add_argument("--question", required=True, help="the question")
    parser.add_argument("--image", help="the question's image (a path anywhere on disk)")
    parser.add_argument("-k", "--k", type=int, default=5, help="passages in the prompt")
    parser.add_argument("--model", help="the model (default: the one that built the index)")
    parser.add_argument("--chunk-size", type=_chunk_size, default="auto",
                        help="with --passages: split passages longer than this many tokens into chunks, each passage "
                             "retrieved by its best chunk; auto: the tokenizer's limit; none: truncate them")  # fmt: skip
    parser.add_argument("--chunk-overlap", type=int, default=16, help="with --passages: tokens shared by "
                        "consecutive chunks")  # fmt: skip
    args = parser.parse_args(argv)
    if args.image_root and not args.passages:
        parser.error("--image-root is for --passages (the knowledge base's own image root is stored in it)")
    if args.passages:
        if args.model is None:
            parser.error("--passages builds a new knowledge base: give the model that encodes it with --model")
        image_root = args.image_root or Path(args.passages[0]).parent
        index = build_knowledge_base(args.index, args.passages, args.model, image_root, args.chunk_size,
                                     args.chunk_overlap)  # fmt: skip
    else:
        from ret2.index import Ret2Index

        index = Ret2Index.open(args.index, args.model)
    print(build_prompt(args.question, retrieve(index, args.question, args.image, args.k)))


if __name__ == "__main__":
    from ret2.cli import run_cli

    run_cli(main)
