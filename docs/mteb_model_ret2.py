"""ReT-2 for mteb's model registry: copy to `mteb/models/model_implementations/ret2_models.py` in a checkout of
mteb, set `HUB_ID` (and the fields marked "fill in") to the published model, and open a pull request
(docs/mteb.md). It depends on mteb, torch and transformers only: the model's own remote code
(`trust_remote_code=True`) does the encoding, through `Ret2Model.encode`.

The wrapper follows UniIR's protocol, as `ret2-eval-mbeir` and `ret2.mteb.Ret2Encoder` do: queries through the query
encoder with the task's instruction in front of their text, documents through the document encoder without one, every
text normalised by UniIR's `format_string`, and every modality of a batch (text, image, or both) passed to the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import Array, BatchedInput

HUB_ID = "your-org/ret2-clip-vit-b-32-mbeir"  # fill in: the published model's Hub id

RET2_CITATION = r"""
@article{caffagni2025recurrence,
  title = {Recurrence Meets Transformers for Universal Multimodal Retrieval},
  author = {Caffagni, Davide and Sarto, Sara and Cornia, Marcella and Baraldi, Lorenzo and Cucchiara, Rita},
  journal = {arXiv preprint arXiv:2509.08897},
  year = {2025},
}
"""


def _uniir_format(text: str) -> str:
    """UniIR's text normalisation: drop carriage returns, strip spaces then quotes, capitalise the first letter, end
    with a period unless the text ends in '.', '?' or '!'."""
    text = text.replace("\r", "").strip().strip('"')
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


class Ret2Wrapper(AbsEncoder):
    """A ReT-2 model (a gated recurrent cell over CLIP's hidden states; one vector per query or document)."""

    def __init__(self, model_name: str, revision: str | None = None, device: str | None = None, **kwargs: Any):
        import torch
        from transformers import AutoModel, AutoProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModel.from_pretrained(model_name, revision=revision, trust_remote_code=True, **kwargs)
        self.model = self.model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(model_name, revision=revision, trust_remote_code=True)

    def encode(
        self,
        inputs: DataLoader[BatchedInput],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> Array:
        kind = "document" if prompt_type == PromptType.document else "query"
        instruction = self.get_task_instruction(task_metadata, prompt_type) if kind == "query" else ""
        samples = []
        for batch in inputs:
            texts, images = batch.get("text"), batch.get("image")
            for i in range(len(texts if texts is not None else images)):
                text = _uniir_format(f"{instruction} {texts[i] if texts is not None else ''}")
                samples.append((text or None, images[i] if images is not None else None))
        return self.model.encode(samples, kind=kind, processor=self.processor, batch_size=kwargs.get("batch_size", 32),
                                 show_progress_bar=kwargs.get("show_progress_bar"))


ret2_clip_vit_b_32_mbeir = ModelMeta(
    loader=Ret2Wrapper,
    name=HUB_ID,
    model_type=["dense"],
    languages=["eng-Latn"],
    revision=None,  # fill in: the commit to evaluate
    release_date=None,  # fill in: "YYYY-MM-DD"
    modalities=["image", "text"],
    n_parameters=None,  # fill in: sum(p.numel() for p in model.parameters())
    memory_usage_mb=None,  # fill in
    max_tokens=77,  # CLIP's text tower
    embed_dim=None,  # fill in: config.embedding_dim
    license="apache-2.0",
    open_weights=True,
    public_training_code=None,  # fill in: where the training code is published
    public_training_data="https://huggingface.co/datasets/TIGER-Lab/M-BEIR",
    framework=["PyTorch", "Transformers"],
    reference=f"https://huggingface.co/{HUB_ID}",
    similarity_fn_name=ScoringFunction.COSINE,
    use_instructions=True,
    adapted_from="openai/clip-vit-base-patch32",
    citation=RET2_CITATION,
    # fill in: the mteb task names whose training splits the model saw (M-BEIR training: its 8 source datasets)
    training_datasets=None,
)
