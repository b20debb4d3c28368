"""Retrieval-augmented generation with ReT-2, the paper's downstream use: a question about an image retrieves
passages from a knowledge base, and the passages and the question become the prompt of any generator (an LLM or a
multimodal LLM: this module stops at the prompt string).

    from ret2.rag import build_knowledge_base, retrieve, build_prompt

    kb = build_knowledge_base("kb-index", ["data/ReT-M2KR/infoseek_passages_test.jsonl"],  # with or without images
                              model="runs/demo/seed-42/ret2-model", image_root="data/ReT-M2KR")
    passages = retrieve(kb, "What is this building called?", image="photo.jpg", k=5)
    passages = retrieve(kb, "What is this building called?", image="photo.jpg", k=5, mode="hybrid",
                        filter={"source": "infoseek_passages_test"})   # BM25 + vectors, over one passage file
    prompt = build_prompt("What is this building called?", passages)   # hand it, with the image, to any generator

The knowledge base is a `ret2.index.Ret2Index` of ReT-M2KR passage files (`passage_id`, `passage_text`,
`passage_image_path`: the layout `eval.m2kr` reads and `ret2.data.synthetic.generate_mbeir` writes under `<root>/m2kr`);
each passage's metadata is `source`, the name of its file without `.jsonl`, so a filter can keep the passages of some
files (`ret2.index.filters`).
Command line: `ret2-rag` (`ret2.commands.rag`): the first call builds the knowledge base from the passage files, later
calls reuse it; each prints the prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ret2.data.m2kr import read_ret_m2kr_passages

if TYPE_CHECKING:  # the index is imported where it is used: importing this module stays light
    from ret2.index import Hit, Ret2Index

PROMPT_TEMPLATE = (
    "Answer the question about the image using the passages below. If they do not contain the answer, say so.\n\n"
    "{passages}\n\nQuestion: {question}\nAnswer:"
)


def passage_records(files: Sequence[str | Path]) -> list[dict]:
    """Index records {"id", "text", "image", "source"} of ReT-M2KR passage files (ids as strings, null texts dropped;
    `source`, the metadata field: the passage file's name without its suffix)."""
    return [{"id": p["pid"], "text": p["text"] or None, "image": p["img_path"], "source": Path(path).stem}
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


def retrieve(
    index: Ret2Index, question: str | None, image: Any = None, k: int = 5, filter: dict | None = None,
    mode: str = "vector", fusion: str = "rrf", weights: Sequence[float] = (0.5, 0.5),
) -> list[Hit]:
    """The top-k passages for a question (text) about an image (a PIL image or a path anywhere on disk); either may
    be None. `filter`, `mode`, `fusion`, `weights`: as `Ret2Index.search` takes them (a metadata filter such as
    `{"source": {"$in": [...]}}`; "vector", "keyword" (BM25 over the passages, the question only) or "hybrid",
    which need a question)."""
    return index.search({"text": question, "image": image}, k=k, filter=filter, mode=mode, fusion=fusion,
                        weights=weights)  # fmt: skip


def build_prompt(question: str, passages: Sequence[Hit], template: str = PROMPT_TEMPLATE) -> str:
    """The generator's prompt: the passages, numbered best first (an image passage names its image file; a chunked
    one gives its best chunk), and the question. `template` has `{passages}` and `{question}` fields."""
    lines = []
    for rank, hit in enumerate(passages, 1):
        image = f" [image: {hit.image}]" if hit.image else ""
        lines.append(f"Passage {rank} ({hit.id}){image}: {hit.text or ''}".rstrip())
    return template.format(passages="\n".join(lines), question=question)
