"""Worker for ``test_loss.py::test_ddp_matches_single_process``; run as
``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ret2/training/dist_loss_worker.py OUT_DIR``.

Each rank first computes the single-process reference on the whole global batch (before the process
group exists, so nothing is gathered), then the loss on its own half inside DistributedDataParallel
(gloo, CPU), and saves both, with the DDP-averaged gradients, to ``OUT_DIR/rank{r}.pt``.
"""

import math
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ret2.training.loss import ContrastiveLoss, gather_with_grad, in_batch_recall_at_1

WORLD, LOCAL_BATCH, N_NEG, IN_DIM, DIM = 2, 3, 2, 8, 4
# Global batch of 6: ids 10 and 11 each appear twice, 10 within rank 0, 11 across ranks.
DOC_IDS = torch.tensor([10, 11, 10, 12, 11, 15])
# Hard negatives (2 per query): ids 11 and 10 are also positives in the batch.
NEG_IDS = torch.tensor([11, 101, 102, 103, 104, 105, 106, 10, 108, 109, 110, 111])


class ToyEncoder(nn.Module):
    """Linear map to (N, D) or (N, K, D), L2-normalised, plus a CLIP-style logit_scale parameter."""

    def __init__(self, n_vectors: int):
        super().__init__()
        torch.manual_seed(0)
        self.n_vectors = n_vectors
        self.proj = nn.Linear(IN_DIM, n_vectors * DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # below the cap: it gets a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.proj(x)  # (N, K*D)
        if self.n_vectors > 1:
            e = e.view(len(x), self.n_vectors, DIM)  # (N, K, D)
        return F.normalize(e, dim=-1)


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    queries, docs, negs = (torch.randn(n, IN_DIM, generator=g) for n in (6, 6, 12))
    docs[2], docs[4] = docs[0], docs[1]  # copies share their input as well as their id
    negs[0], negs[7] = docs[1], docs[0]
    return {"queries": queries, "docs": docs, "negs": negs, "doc_ids": DOC_IDS, "neg_ids": NEG_IDS}


def loss_and_recall(encoder: nn.Module, logit_scale: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    n_q, n_d = len(batch["queries"]), len(batch["docs"])
    embeds = encoder(torch.cat([batch["queries"], batch["docs"], batch["negs"]]))  # one forward for DDP
    q, d, n = embeds[:n_q], embeds[n_q : n_q + n_d], embeds[n_q + n_d :]
    loss = ContrastiveLoss()(q, d, logit_scale, batch["doc_ids"], n, batch["neg_ids"])
    return loss, in_batch_recall_at_1(q, d, batch["doc_ids"])


def main(out_dir: str) -> None:
    batch = make_batch()
    results = {}
    for n_vectors in (1, 3):
        reference = ToyEncoder(n_vectors)
        ref_loss, ref_recall = loss_and_recall(reference, reference.logit_scale, batch)
        ref_loss.backward()
        results[n_vectors] = {
            "ref_loss": ref_loss.detach(),
            "ref_recall": ref_recall,
            "ref_grads": {k: p.grad.clone() for k, p in reference.named_parameters()},
        }

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    neg_rows = slice(rank * LOCAL_BATCH * N_NEG, (rank + 1) * LOCAL_BATCH * N_NEG)
    local = {k: v[neg_rows if k in ("negs", "neg_ids") else rows] for k, v in batch.items()}  # this rank's half
    for n_vectors in (1, 3):
        ddp = DistributedDataParallel(ToyEncoder(n_vectors))
        loss, recall = loss_and_recall(ddp, ddp.module.logit_scale, local)
        loss.backward()
        results[n_vectors].update(
            loss=loss.detach(), recall=recall, grads={k: p.grad.clone() for k, p in ddp.module.named_parameters()}
        )

    try:  # rank 1 is one row short
        gather_with_grad(torch.zeros(LOCAL_BATCH - rank, DIM))
        results["ragged_error"] = None
    except ValueError as e:
        results["ragged_error"] = str(e)

    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.barrier()  # no rank tears down while a peer may already be gone (a hang in gloo's teardown otherwise)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
