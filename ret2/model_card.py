"""The model card of a published ReT-2 repository: metadata (tags, license, base models, the benchmarks its scores were
measured on), what the model is, how to load and use it (`AutoModel`, the one-call `encode`, sentence-transformers),
which transformers it needs, its evaluation tables and the citation. `ret2.publish` writes it as the repository's
README.md."""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import ModelCardData

from configuration_ret2.configuration_ret2 import MIN_TRANSFORMERS_VERSION
from modeling_ret2 import Ret2Model
from ret2.model import is_hub_id

TAGS = ["ret2", "multimodal-retrieval", "image-text-retrieval", "text-image-retrieval", "custom_code"]
MBEIR_ID = "TIGER-Lab/M-BEIR"
M2KR_ID = "BByrneLab/multi_task_multi_modal_knowledge_retrieval_benchmark_M2KR"
M2KR_NAMES = {"wit", "iglue", "kvqa", "oven", "llava", "infoseek", "evqa", "okvqa"}

RET2_BIBTEX = """@article{caffagni2025ret2,
  title   = {Recurrence Meets Transformers for Universal Multimodal Retrieval},
  author  = {Caffagni, Davide and Sarto, Sara and Cornia, Marcella and Baraldi, Lorenzo and Cucchiara, Rita},
  journal = {arXiv preprint arXiv:2509.08897},
  year    = {2025}
}"""
RET1_BIBTEX = """@inproceedings{caffagni2025ret1,
  title     = {Recurrence-Enhanced Vision-and-Language Transformers for Robust Multimodal Document Retrieval},
  author    = {Caffagni, Davide and Sarto, Sara and Cornia, Marcella and Baraldi, Lorenzo and Cucchiara, Rita},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025}
}"""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_metric_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(_is_number(v) for v in value.values())


def _format_metric(value: float | None) -> str:
    """Fractions as percentages, counts as they are, a missing value as a dash."""
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if isinstance(value, float) and 0.0 <= value <= 1.0 else f"{value:g}"


def metrics_markdown(results: dict) -> str:
    """Markdown for a nested dict of metrics: one table per dict whose entries are metric dicts (a row per entry, in
    file order; a column per metric name, "–" where a row lacks it), then that dict's loose numbers as a list."""
    blocks = []

    def walk(node: dict, path: list[str]) -> None:
        rows = {k: v for k, v in node.items() if _is_metric_dict(v)}
        loose = {k: v for k, v in node.items() if _is_number(v)}
        lines = [f"**{' / '.join(path)}**", ""] if path and (rows or loose) else []
        if rows:
            columns = list(dict.fromkeys(metric for metrics in rows.values() for metric in metrics))
            lines += ["| dataset | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            for label, metrics in rows.items():
                lines.append(f"| {label} | " + " | ".join(_format_metric(metrics.get(c)) for c in columns) + " |")
            lines += [""] if loose else []
        lines += [f"- {k}: {_format_metric(v)}" for k, v in loose.items()]
        if lines:
            blocks.append("\n".join(lines))
        for k, v in node.items():
            if isinstance(v, dict) and not _is_metric_dict(v):
                walk(v, path + [str(k)])

    walk(results, [])
    return "\n\n".join(blocks)


def measured_on_generated_data(results: dict) -> bool:
    """Whether eval results say they were measured on data written by `ret2.data.synthetic` (their "data" entry)."""
    data = results.get("data")
    return isinstance(data, dict) and data.get("generated") is True


def datasets_of(results: dict) -> list[str]:
    """Hub ids of the benchmarks the eval results were measured on: M-BEIR (pools `mbeir_*`) and M2KR (sub-datasets),
    only where the results record real data (an evaluation's "data" entry, not generated): none otherwise, for a
    row named `mbeir_*` is also what the generated data's rows are called."""
    data = results.get("data")
    if not isinstance(data, dict) or data.get("generated") is not False:
        return []
    keys, stack = set(), [results]
    while stack:
        node = stack.pop()
        keys |= {str(k).lower().replace("-", "") for k in node}
        stack += [v for v in node.values() if isinstance(v, dict)]
    return [MBEIR_ID] * any(k.startswith("mbeir_") for k in keys) + [M2KR_ID] * bool(keys & M2KR_NAMES)


def _tower(config) -> str:
    name = f" (`{config._name_or_path}`)" if is_hub_id(config._name_or_path) else ""
    return f"`{config.model_type}`{name}, {config.num_hidden_layers} layers, width {config.hidden_size}"


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sentence_transformers_usage(repo_id: str, revision: str) -> list[str]:
    """The card's sentence-transformers example (single-vector models: a multi-vector folder refuses to load there)."""
    return [
        "",
        "With [sentence-transformers](https://www.sbert.net) (a string naming an image file is an image; a dict is "
        "text and image):",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'st = SentenceTransformer("{repo_id}", revision="{revision}", trust_remote_code=True)',
        'queries = st.encode_query(["a red dress with long sleeves", {"text": "which building is this?", '
        '"image": "query.jpg"}])',
        'documents = st.encode_document([{"text": "Eiffel Tower, Paris", "image": "tower.jpg"}, "dress.jpg"])',
        "scores = st.similarity(queries, documents)  # cosine, (2, 2)",
        "```",
    ]


def recipe_section(data: dict) -> list[str]:
    """The card's training section for a model folder's `recipe.json` (`ret2.training.recipes.record`): the recipe,
    each setting's value and source, and where a flag changed the recipe's value."""
    lines = [
        "## Training",
        "",
        f"Trained with `ret2-train --recipe {data['recipe']}`: {data['description']}. Values marked *not published* "
        "are the package's defaults where the ReT-2 authors' public threads give none.",
        "",
        "| setting | value | source |",
        "|---|---|---|",
    ]
    for setting in data["settings"]:
        value = f"`{setting['used']}`" + (f" (recipe: `{setting['recipe']}`)" if setting["overridden"] else "")
        source = setting["source"] if setting["published"] else "*not published*"
        lines.append(f"| `{setting['flag']}` | {value} | {source} |")
    lines += [f"| `{flag}` | `{value}` | given by the run |" for flag, value in data.get("needs", {}).items()]
    return lines


def model_card(
    model: Ret2Model,
    repo_id: str,
    revision: str = "main",
    license: str = "apache-2.0",
    base_model: list[str] | None = None,
    datasets: list[str] | None = None,
    eval_results: dict | None = None,
    source_note: str | None = None,
    training: list[str] | None = None,
) -> str:
    """README.md of the published repository: YAML metadata, usage with a pinned revision, architecture summary,
    the training section (`training`: its markdown lines, e.g. `recipe_section`), evaluation tables (`eval_results`,
    fractions shown as percentages) and citation."""
    config = model.config
    data = ModelCardData(
        library_name="transformers", license=license, tags=TAGS, base_model=base_model or None,
        datasets=datasets or None, pipeline_tag="feature-extraction",
    )  # fmt: skip
    total, text, vision = _params(model), _params(model.text_model), _params(model.vision_model)
    output = (
        f"one L2-normalised {config.embedding_dim}-d vector per item (mean of the latent tokens); cosine similarity"
        if config.pooling == "mean"
        else f"{config.num_latent_tokens} L2-normalised {config.embedding_dim}-d vectors per item; late interaction"
    )
    lines = [
        f"# {repo_id.split('/')[1]}",
        "",
        "A [ReT-2](https://arxiv.org/abs/2509.08897) universal multimodal retriever: a query or a document made of "
        "text, an image, or both is encoded by a gated recurrent cell that reads a few layers of a text and a vision "
        "tower, shallow to deep.",
        *([""] + [source_note] if source_note else []),
        *(["", "Base model: " + ", ".join(f"[`{b}`](https://huggingface.co/{b})" for b in base_model) + "."]
          if base_model else []),
        "",
        "## Usage",
        "",
        "`trust_remote_code=True` runs this repository's `configuration_ret2.py`, `modeling_ret2.py`, "
        "`processing_ret2.py` and `sentence_ret2.py` (sentence-transformers) on your machine. Read them, then pin "
        "`revision` to the commit sha you reviewed (listed "
        "under *Files and versions*) so that later pushes cannot change the code you run.",
        "",
        f"Needs `transformers>={MIN_TRANSFORMERS_VERSION}`: the 4.57 line and 5.x (tested: 4.57.6 and 5.24.0, with "
        "sentence-transformers 5.7 and 6.2); an older transformers stops at import with one line naming both "
        "versions.",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModel, AutoProcessor",
        "",
        f'repo_id, revision = "{repo_id}", "{revision}"  # better: a reviewed commit sha',
        "model = AutoModel.from_pretrained(repo_id, revision=revision, trust_remote_code=True).eval()",
        "processor = AutoProcessor.from_pretrained(repo_id, revision=revision, trust_remote_code=True)",
        "",
        "# each query or document may be text, an image, or both (None where a modality is missing)",
        'queries = processor(text=["a red dress with long sleeves", "which building is this?"],',
        '                    images=[None, Image.open("query.jpg")], return_tensors="pt")',
        'documents = processor(text=["Eiffel Tower, Paris", None],',
        '                      images=[Image.open("tower.jpg"), Image.open("dress.jpg")], return_tensors="pt")',
        "with torch.no_grad():",
        "    scores = model.similarity(model.encode_queries(**queries), model.encode_documents(**documents))  # (2, 2)",
        "",
        "# or in one call from raw inputs: a str is text, a PIL image or pathlib.Path an image, a (text, image) tuple",
        "# both; batched and sorted by modality and length, returned in input order (numpy, L2-normalised)",
        "from pathlib import Path",
        "",
        'queries = model.encode(["a red dress with long sleeves", ("which building is this?", Path("query.jpg"))],',
        '                       kind="query", processor=processor)',
        'documents = model.encode([("Eiffel Tower, Paris", Path("tower.jpg")), Path("dress.jpg")], kind="document",',
        "                         processor=processor)",
        "scores = queries @ documents.T  # cosine similarities, (2, 2)",
        "```",
        *(_sentence_transformers_usage(repo_id, revision) if config.pooling == "mean" else []),
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| Parameters | {total:,} (text tower {text:,}; vision tower {vision:,}; cell, adapters and projection "
        f"{total - text - vision:,}) |",
        f"| Text tower | {_tower(config.text_config)} |",
        f"| Vision tower | {_tower(config.vision_config)} |",
        f"| Tapped blocks (0-based), text / vision | {config.text_layer_ids} / {config.vision_layer_ids} |",
        f"| Recurrent cell | width {config.hidden_size}, {config.num_latent_tokens} latent tokens, "
        f"{config.num_attention_heads} heads, one step per tapped pair |",
        f"| Output | {output} |",
        f"| Query / document encoder | {'shared' if config.share_encoder else 'separate (ReT-1)'} |",
    ]
    if training:
        lines += ["", *training]
    if eval_results:
        source = (" Measured on data generated by `ret2.data.synthetic` in the benchmarks' layout, not on the "
                  "benchmarks themselves." if measured_on_generated_data(eval_results) else "")  # fmt: skip
        lines += ["", "## Evaluation", "", f"Scores in percent.{source}", "", metrics_markdown(eval_results)]
    lines += ["", "## Citation", "", "```bibtex", RET2_BIBTEX, "```"]
    if source_note and "ReT-1" in source_note:
        lines += ["", "```bibtex", RET1_BIBTEX, "```"]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
