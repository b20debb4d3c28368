"""Contrastive (InfoNCE) loss for ReT-2, with in-batch, cross-rank and hard negatives.

The model hands over L2-normalised embeddings, one vector per item ``(B, D)`` or ReT-1-style
multi-vector ``(B, K, D)``, plus its learnable ``logit_scale`` (log of the inverse temperature).
Under ``torch.distributed`` every rank scores its *local* rows against the *gathered* columns of all
ranks (open_clip's scheme), with the gradient flowing back through the gather.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from modeling_ret2 import similarity, truncate_embeddings


def _rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    # The functional all-gather is differentiable: its backward reduce-scatters (sums) the gradient
    # every rank computed for a slice back to the rank that owns it. `wait_tensor` turns the lazy
    # AsyncCollectiveTensor into a plain tensor and keeps the graph.
    return funcol.wait_tensor(funcol.all_gather_single_autograd(t.contiguous(), 0, dist.group.WORLD))


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenates ``t`` from all ranks along dim 0, keeping the autograd graph.

    ``t`` (B, ...) -> (world_size * B, ...), rank r's rows at ``[r * B, (r + 1) * B)``. Returns ``t``
    itself when ``torch.distributed`` is not initialised or has a single process.

    Every rank must pass the same shape. The Trainer's DistributedSampler pads every rank to the same
    number of samples, and with ``dataloader_drop_last=True`` every batch is full; a ragged batch
    raises a ValueError on all ranks (the shapes are gathered first, which is cheap).
    """
    _, world_size = _rank_and_world_size()
    if world_size == 1:
        return t
    shapes = _all_gather(torch.tensor(t.shape, device=t.device)[None])  # (world_size, t.ndim)
    if not (shapes == shapes[0]).all():
        raise ValueError(
            f"gather_with_grad needs the same shape on every rank, got {shapes.tolist()}; "
            "give every rank equal local batches (e.g. TrainingArguments(dataloader_drop_last=True))."
        )
    return _all_gather(t)


def _copies_of_positive(doc_ids: torch.Tensor, all_doc_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, N) True where column j holds another copy of row i's document (same id, not the label column)."""
    copies = doc_ids[:, None] == all_doc_ids[None, :]  # (B, N)
    copies[torch.arange(len(labels), device=labels.device), labels] = False
    return copies


def _multi_positive_loss(
    logits: torch.Tensor, labels: torch.Tensor, column_ids: torch.Tensor, positive_ids: torch.Tensor
) -> torch.Tensor:
    """Mean over rows of ``-log(sum over positive columns of softmax(logits_i))``. logits (B, N) (masked columns at
    -inf), labels (B,) each row's own positive column, column_ids (N,), positive_ids (B, P). A positive column whose id
    an earlier column already holds is dropped, so a document counts once."""
    rows = torch.arange(len(labels), device=labels.device)
    earlier_copy = (column_ids[None, :] == column_ids[:, None]).tril(-1).any(dim=1)  # (N,) an earlier column has its id
    positive = (column_ids[None, :, None] == positive_ids[:, None, :]).any(dim=2)  # (B, N)
    positive[rows, labels] = True
    copies = positive & earlier_copy[None, :]
    copies[rows, labels] = False  # the own column stays (its earlier copies, if any, are masked by the caller)
    logits = logits.masked_fill(copies, -math.inf)
    positive &= ~copies
    return (logits.logsumexp(dim=1) - logits.masked_fill(~positive, -math.inf).logsumexp(dim=1)).mean()


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over in-batch negatives, gathered across ranks, plus optional hard negatives.

    query -> doc: each local query against the documents of all ranks (and all ranks' hard negatives);
    doc -> query: each local document against the queries of all ranks, scored with the same
    ``s(q, d)`` (late interaction is not symmetric). The loss is the mean over local rows; DDP's
    gradient averaging over ranks then gives exactly the gradient of the loss on the global batch.

    Args:
        symmetric: average the query->doc and doc->query cross-entropies (True) or use query->doc only.
        max_logit_scale: cap on ``exp(logit_scale)`` (CLIP uses 100); above it the gradient wrt
            ``logit_scale`` is zero.

    Example:
        >>> loss_fn = ContrastiveLoss()
        >>> q = F.normalize(torch.randn(4, 8), dim=-1)
        >>> loss = loss_fn(q, q, torch.tensor(math.log(20.0)), doc_ids=torch.tensor([7, 7, 8, 9]))
    """

    def __init__(self, symmetric: bool = True, max_logit_scale: float = 100.0):
        super().__init__()
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
        if isinstance(max_logit_scale, bool) or not isinstance(max_logit_scale, (int, float)) or not (
            0 < max_logit_scale < math.inf
        ):
            raise ValueError(f"max_logit_scale must be a finite number > 0 (e.g. 100.0), got {max_logit_scale!r}")
        self.symmetric = symmetric
        self.max_logit_scale = float(max_logit_scale)

    def extra_repr(self) -> str:
        return f"symmetric={self.symmetric}, max_logit_scale={self.max_logit_scale}"

    def forward(
        self,
        query_embeds: torch.Tensor,
        doc_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        neg_doc_embeds: torch.Tensor | None = None,
        neg_doc_ids: torch.Tensor | None = None,
        positive_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss for this rank's rows.

        Args:
            query_embeds: (B, D) or (B, K, D), L2-normalised; query i's positive is ``doc_embeds[i]``.
            doc_embeds: (B, D) or (B, L, D), L2-normalised.
            logit_scale: scalar tensor, log of the inverse temperature; clamped to ``log(max_logit_scale)``.
            doc_ids: (B,) integer ids of the documents. Copies of a query's positive elsewhere in the
                global batch are removed from its softmax (and likewise for doc -> query) instead of
                being counted as negatives.
            neg_doc_embeds: (B * n_neg, D) or (B * n_neg, L, D) hard negatives, extra columns of the
                query -> doc direction only (gathered across ranks like the documents).
            neg_doc_ids: (B * n_neg,) ids of the hard negatives; needs ``doc_ids``. A hard negative
                with the id of a query's positive is removed from that query's softmax.
            positive_ids: (B, P) ids of every positive of each query (pad a row by repeating an id); needs
                ``doc_ids``. Multi-positive InfoNCE in the query -> doc direction: every column (in-batch document or
                hard negative) holding one of query i's positives counts as a positive, each document once (later
                copies of an id are removed), and row i's loss is ``-log(sum_p exp(s_ip) / sum_j exp(s_ij))``, the
                probability of picking any of its positives. The doc -> query direction is unchanged. Without it
                (the default) only ``doc_embeds[i]`` is query i's positive.
        """
        batch_size = query_embeds.shape[0]
        if doc_embeds.shape[0] != batch_size:
            raise ValueError(
                f"query_embeds and doc_embeds need the same batch size, got {batch_size} and {doc_embeds.shape[0]}"
            )
        if doc_ids is not None and doc_ids.shape != (batch_size,):
            raise ValueError(f"doc_ids must have shape ({batch_size},), got {tuple(doc_ids.shape)}")
        if positive_ids is not None:
            if doc_ids is None or (neg_doc_embeds is not None and neg_doc_ids is None):
                raise ValueError("positive_ids needs doc_ids (and neg_doc_ids with hard negatives)")
            if positive_ids.dim() != 2 or positive_ids.shape[0] != batch_size:
                raise ValueError(f"positive_ids must have shape ({batch_size}, P), got {tuple(positive_ids.shape)}")
        if neg_doc_ids is not None:
            if doc_ids is None or neg_doc_embeds is None:
                raise ValueError("neg_doc_ids needs doc_ids and neg_doc_embeds as well")
            if neg_doc_ids.shape != neg_doc_embeds.shape[:1]:
                raise ValueError(
                    f"neg_doc_ids must have shape ({neg_doc_embeds.shape[0]},), got {tuple(neg_doc_ids.shape)}"
                )

        rank, _ = _rank_and_world_size()
        # (B,) column of each local row's own positive among the gathered W*B columns
        labels = rank * batch_size + torch.arange(batch_size, device=query_embeds.device)
        scale = logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()
        copies = None  # (B, W*B) other copies of each row's positive, masked in both directions
        if doc_ids is not None:
            copies = _copies_of_positive(doc_ids, gather_with_grad(doc_ids), labels)

        # Scale before masking: scale * -inf would give a NaN gradient wrt the scale. Logits in float32:
        # in bf16, logits near 100 are rounded to steps of 0.5.
        logits_per_query = scale * similarity(query_embeds, gather_with_grad(doc_embeds)).float()  # (B, W*B)
        if copies is not None:
            logits_per_query = logits_per_query.masked_fill(copies, -math.inf)
        if neg_doc_embeds is not None:
            neg_logits = scale * similarity(query_embeds, gather_with_grad(neg_doc_embeds)).float()  # (B, W*B*n_neg)
            if neg_doc_ids is not None:
                neg_is_positive = doc_ids[:, None] == gather_with_grad(neg_doc_ids)[None, :]  # (B, W*B*n_neg)
                neg_logits = neg_logits.masked_fill(neg_is_positive, -math.inf)
            logits_per_query = torch.cat([logits_per_query, neg_logits], dim=1)  # (B, W*B*(1 + n_neg))
        if positive_ids is None:
            loss = F.cross_entropy(logits_per_query, labels)
        else:
            column_ids = gather_with_grad(doc_ids)  # (N,) the id of every column, N = W*B (+ W*B*n_neg)
            if neg_doc_embeds is not None:
                column_ids = torch.cat([column_ids, gather_with_grad(neg_doc_ids)])
            loss = _multi_positive_loss(logits_per_query, labels, column_ids, positive_ids)
        if not self.symmetric:
            return loss

        # Row i: local document i against all queries; the same copies are masked (the relation is symmetric).
        logits_per_doc = scale * similarity(gather_with_grad(query_embeds), doc_embeds).T.float()  # (W*B, B).T -> (B, W*B)
        if copies is not None:
            logits_per_doc = logits_per_doc.masked_fill(copies, -math.inf)
        return (loss + F.cross_entropy(logits_per_doc, labels)) / 2


class MatryoshkaLoss(nn.Module):
    """A contrastive loss summed over nested prefixes of the embeddings (Matryoshka Representation Learning, Kusupati
    et al. 2022): for each size d, the first d components of every query, document and hard-negative embedding,
    L2-normalised again, go through `loss`; the result is the weighted sum over the sizes.

    Args:
        loss: the loss applied at each size (e.g. `ContrastiveLoss()`); same arguments as its `forward`.
        dims: the sizes, each in [1, D] (D itself supervises the full embedding).
        weights: one weight per size (default: 1 each).

    Example:
        >>> loss_fn = MatryoshkaLoss(ContrastiveLoss(), dims=[8, 4])
        >>> q = F.normalize(torch.randn(4, 8), dim=-1)
        >>> loss = loss_fn(q, q, torch.tensor(math.log(20.0)))
    """

    def __init__(self, loss: nn.Module, dims: list[int], weights: list[float] | None = None):
        super().__init__()
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"dims must be a non-empty list of positive integers (e.g. [768, 256, 64]), got {dims!r}")
        weights = [1.0] * len(dims) if weights is None else list(weights)
        if len(weights) != len(dims):
            raise ValueError(f"weights must give one weight per size: {len(dims)} sizes {dims}, got {weights!r}")
        self.loss, self.dims, self.weights = loss, list(dims), weights

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}"

    def forward(
        self,
        query_embeds: torch.Tensor,
        doc_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
        neg_doc_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """sum over sizes d of weight_d * loss(prefix_d(query_embeds), prefix_d(doc_embeds), ...); the other keyword
        arguments (`doc_ids`, `neg_doc_ids`, ...) go to `loss` unchanged."""
        full = query_embeds.shape[-1]
        if max(self.dims) > full:
            raise ValueError(f"Matryoshka sizes {self.dims} exceed the embeddings' size {full}")
        total = query_embeds.new_zeros((), dtype=torch.float32)
        for dim, weight in zip(self.dims, self.weights):
            total = total + weight * self.loss(
                truncate_embeddings(query_embeds, dim), truncate_embeddings(doc_embeds, dim), logit_scale,
                neg_doc_embeds=truncate_embeddings(neg_doc_embeds, dim) if neg_doc_embeds is not None else None,
                **kwargs,
            )  # fmt: skip
        return total


@torch.no_grad()
def in_batch_recall_at_1(
    query_embeds: torch.Tensor, doc_embeds: torch.Tensor, doc_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """recall@1 over the global batch: the fraction of queries whose top-scoring in-batch document is
    their positive (or, with ``doc_ids``, any copy of it). Same value on every rank.

    query_embeds (B, D) or (B, K, D), doc_embeds (B, D) or (B, L, D), doc_ids (B,) -> scalar float tensor.
    """
    all_queries, all_docs = gather_with_grad(query_embeds), gather_with_grad(doc_embeds)  # (W*B, ...)
    top1 = similarity(all_queries, all_docs).argmax(dim=1)  # (W*B,)
    if doc_ids is None:
        hits = top1 == torch.arange(len(top1), device=top1.device)  # (W*B,)
    else:
        all_ids = gather_with_grad(doc_ids)  # (W*B,)
        hits = all_ids[top1] == all_ids  # (W*B,)
    return hits.float().mean()
