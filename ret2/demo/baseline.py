"""A score-fusion baseline in the style of UniIR's CLIP_SF, over the same towers as a ReT-2 model.

Each modality is embedded by its tower's pooled output (CLIP: the text EOS token, the image CLS token, both after the
final layer norm) and a linear projection; a sample's embedding is the normalised sum of the embeddings of the
modalities it has. No layer-wise fusion: this is what ReT-2's gated recurrence over intermediate layers is measured
against.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from configuration_ret2 import Ret2Config
from modeling_ret2 import Ret2Output, Ret2Processor
from modeling_ret2.modeling_ret2 import build_tower


class ScoreFusionModel(nn.Module):
    """Same inputs and outputs as `Ret2Model` (`encode_queries`, `encode_documents`, `forward`, `similarity`)."""

    def __init__(self, config: Ret2Config):
        super().__init__()
        self.config = config
        self.text_model = build_tower(config.text_config)
        self.vision_model = build_tower(config.vision_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.embedding_dim, bias=False)
        self.vision_projection = nn.Linear(config.vision_config.hidden_size, config.embedding_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))

    def encode_queries(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        vision_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        fused = 0.0
        if input_ids is not None:
            pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output  # (B, d_t)
            mask = text_mask if text_mask is not None else torch.ones(len(input_ids), device=input_ids.device)
            fused = fused + self.text_projection(pooled) * mask[:, None].to(pooled.dtype)
        if pixel_values is not None:
            pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # (B, d_v)
            mask = vision_mask if vision_mask is not None else torch.ones(len(pixel_values), device=pooled.device)
            fused = fused + self.vision_projection(pooled) * mask[:, None].to(pooled.dtype)
        return F.normalize(fused, dim=-1)  # (B, D)

    encode_documents = encode_queries  # UniIR's score fusion shares one encoder between queries and candidates

    similarity = staticmethod(lambda queries, documents: queries @ documents.T)

    def forward(self, **inputs: torch.Tensor) -> Ret2Output:
        sides = {side: {k[len(side) + 1 :]: v for k, v in inputs.items() if k.startswith(side + "_")} for side in ("query", "doc")}
        return Ret2Output(
            query_embeds=self.encode_queries(**sides["query"]) if sides["query"] else None,
            doc_embeds=self.encode_documents(**sides["doc"]) if sides["doc"] else None,
            logit_scale=self.logit_scale.view(()),  # a view: see Ret2Model.forward
        )

    def save(self, folder: str | Path, processor: Ret2Processor) -> None:
        """Config, safetensors weights and processor; `ScoreFusionModel.load(folder)` reads them back."""
        folder = Path(folder)
        self.config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")
        processor.save_pretrained(folder)

    @classmethod
    def load(cls, folder: str | Path) -> tuple["ScoreFusionModel", Ret2Processor]:
        model = cls(Ret2Config.from_pretrained(folder))
        model.load_state_dict(load_file(Path(folder) / "model.safetensors"))
        return model.eval(), Ret2Processor.from_pretrained(folder, trust_remote_code=False)
