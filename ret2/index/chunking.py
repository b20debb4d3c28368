"""Chunked documents: a text longer than `size` tokens is split on token boundaries into overlapping windows, each
encoded with the document's image as a row of its own (`<doc id>#<n>`); a search returns each document once, with its
best chunk."""

from __future__ import annotations

from ret2.model import text_limit


def split_text(tokenizer, text: str, size: int, overlap: int) -> list[str]:
    """`text` cut on token boundaries into windows of `size` tokens, each starting `size - overlap` tokens after the
    previous one (the last may be shorter); a text of at most `size` tokens is one chunk. Each chunk is the exact
    span of the original text its tokens cover (whitespace and case kept)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    if len(offsets) <= size:
        return [text]
    chunks = []
    for start in range(0, len(offsets), size - overlap):
        window = offsets[start : start + size]
        chunks.append(text[window[0][0] : window[-1][1]])
        if start + size >= len(offsets):
            break
    return chunks


def check_chunk_arguments(chunk_size, chunk_overlap) -> None:
    if chunk_size not in (None, "auto") and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, 'auto' or None, got {chunk_size!r}")
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or chunk_overlap < 0:
        raise ValueError(f"chunk_overlap must be an integer >= 0, got {chunk_overlap!r}")


def chunking_settings(name_or_path: str, size: int | str, overlap: int) -> dict:
    """{"size", "overlap"} of `build`'s chunks, checked against the model's tokenizer: a chunk and the special tokens
    its text gets fit the tokenizer's limit ("auto": the largest that fits)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    special = len(processor.tokenizer("", verbose=False)["input_ids"])  # the BOS / EOS every text gets
    limit = text_limit(processor) - special
    size = limit if size == "auto" else size
    if size > limit:
        raise ValueError(f"chunk_size {size} is above the tokenizer's limit of {limit} tokens per text (plus "
                         f"{special} special tokens); give at most {limit}")  # fmt: skip
    if overlap >= size:
        raise ValueError(f"chunk_overlap {overlap} must be below the chunk size {size}")
    return {"size": size, "overlap": overlap}


def chunk_records(records: list[dict], tokenizer, chunking: dict) -> list[dict]:
    """Each record as its chunks: records `{id: "<doc id>#<n>", "doc_id", "chunk": n, text, image, metadata}`."""
    out = []
    for r in records:
        texts = split_text(tokenizer, r["text"], **chunking) if r["text"] else [None]
        out += [{**r, "id": f"{r['id']}#{n}", "doc_id": r["id"], "chunk": n, "text": text}
                for n, text in enumerate(texts)]  # fmt: skip
    return out
