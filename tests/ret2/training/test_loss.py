"""Tests for training/loss.py: analytic loss values, duplicate-document masking, logit-scale clamping,
late-interaction scores, in-batch recall@1, the Matryoshka sum over prefixes, and (slow) 2-process DDP gradients against one process."""

import math
import os
import sys

import pytest
import processes
import torch
import torch.nn.functional as F
from conftest import REPO

from modeling_ret2 import similarity
from ret2.training.loss import ContrastiveLoss, MatryoshkaLoss, gather_with_grad, in_batch_recall_at_1


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _nll(logits_row: torch.Tensor, label: int, keep: list[int]) -> torch.Tensor:
    """Cross-entropy of one row by hand, the softmax restricted to the columns in ``keep``."""
    return logits_row[keep].logsumexp(0) - logits_row[label]


@pytest.mark.parametrize("shape", [(4, 8), (4, 3, 8)], ids=["single-vector", "multi-vector"])
def test_zero_embeddings_give_log_batch(shape):
    """All scores equal: each row's cross-entropy is log(number of columns)."""
    zeros, scale = torch.zeros(shape), torch.tensor(math.log(20.0))
    negs = torch.zeros((8, *shape[1:]))  # n_neg = 2
    torch.testing.assert_close(ContrastiveLoss()(zeros, zeros, scale), torch.tensor(math.log(4)))
    # query -> doc sees 4 + 8 columns, doc -> query still 4
    expected = (math.log(4 + 8) + math.log(4)) / 2
    torch.testing.assert_close(ContrastiveLoss()(zeros, zeros, scale, neg_doc_embeds=negs), torch.tensor(expected))
    one_way = ContrastiveLoss(symmetric=False)(zeros, zeros, scale, neg_doc_embeds=negs)
    torch.testing.assert_close(one_way, torch.tensor(math.log(12)))


def test_orthonormal_embeddings_give_zero_loss():
    eye = torch.eye(4, 8)  # (B, D): positives score 1, negatives 0
    multi = eye[:, None, :].expand(4, 3, 8)  # (B, K, D): every token of item i is e_i
    scale = torch.tensor(math.log(100.0))
    assert ContrastiveLoss()(eye, eye, scale, neg_doc_embeds=torch.eye(8)[4:]).item() < 1e-6
    assert ContrastiveLoss()(multi, multi, scale).item() < 1e-6


def test_logit_scale_is_clamped():
    q, d = _unit(5, 8, seed=1), _unit(5, 8, seed=2)
    at_cap = ContrastiveLoss()(q, d, torch.tensor(math.log(100.0)))
    above = torch.tensor(math.log(1000.0), requires_grad=True)
    loss = ContrastiveLoss()(q, d, above)
    loss.backward()
    torch.testing.assert_close(loss, at_cap)
    assert above.grad.item() == 0.0
    below = torch.tensor(math.log(10.0), requires_grad=True)
    ContrastiveLoss()(q, d, below).backward()
    assert abs(below.grad.item()) > 1e-3
    # the cap is configurable
    capped_at_10 = ContrastiveLoss(max_logit_scale=10.0)(q, d, torch.tensor(math.log(50.0)))
    torch.testing.assert_close(capped_at_10, ContrastiveLoss()(q, d, torch.tensor(math.log(10.0))))


def test_duplicate_documents_are_not_negatives():
    """Queries 0 and 1 share a document id: each one's copy leaves the other's softmax, both ways."""
    q, d = _unit(3, 8, seed=3), _unit(3, 8, seed=4)
    s = 10.0 * (q @ d.T)  # (3, 3) logits, [query, doc]
    q2d = [_nll(s[0], 0, [0, 2]), _nll(s[1], 1, [1, 2]), _nll(s[2], 2, [0, 1, 2])]
    d2q = [_nll(s[:, 0], 0, [0, 2]), _nll(s[:, 1], 1, [1, 2]), _nll(s[:, 2], 2, [0, 1, 2])]
    expected = (torch.stack(q2d).mean() + torch.stack(d2q).mean()) / 2
    loss_fn, scale = ContrastiveLoss(), torch.tensor(math.log(10.0))
    torch.testing.assert_close(loss_fn(q, d, scale, doc_ids=torch.tensor([5, 5, 7])), expected)
    torch.testing.assert_close(loss_fn(q, d, scale, doc_ids=torch.tensor([5, 6, 7])), loss_fn(q, d, scale))
    assert abs(loss_fn(q, d, scale).item() - expected.item()) > 1e-3


def test_hard_negative_equal_to_a_positive_is_masked():
    """Query 0's hard negative has the id of query 1's positive: it is dropped from query 1's softmax only."""
    q, d, negs = _unit(2, 8, seed=5), _unit(2, 8, seed=6), _unit(2, 8, seed=7)
    s = 10.0 * (q @ torch.cat([d, negs]).T)  # (2, 4) logits: columns d0, d1, n0, n1
    expected = (_nll(s[0], 0, [0, 1, 2, 3]) + _nll(s[1], 1, [0, 1, 3])) / 2
    loss = ContrastiveLoss(symmetric=False)(
        q, d, torch.tensor(math.log(10.0)), torch.tensor([1, 2]), negs, neg_doc_ids=torch.tensor([2, 9])
    )
    torch.testing.assert_close(loss, expected)


def test_late_interaction_matches_brute_force():
    q, d = _unit(3, 4, 5, seed=8), _unit(2, 6, 5, seed=9)  # (Nq, K, D), (Nd, L, D)
    brute = torch.tensor(
        [[sum(max(float(qk @ dl) for dl in d[j]) for qk in q[i]) for j in range(2)] for i in range(3)]
    )
    torch.testing.assert_close(similarity(q, d), brute)
    torch.testing.assert_close(similarity(q[:, 0], d[:, 0]), q[:, 0] @ d[:, 0].T)
    with pytest.raises(ValueError, match=r"two \(N, D\) or two \(N, K, D\)"):
        similarity(q, d[:, 0])


def test_in_batch_recall_at_1():
    docs = torch.eye(4, 8)
    queries = docs[[0, 1, 3, 2]]  # queries 2 and 3 retrieve each other's document
    assert in_batch_recall_at_1(queries, docs).item() == 0.5
    # documents 2 and 3 are copies of one document: retrieving the copy is a hit
    assert in_batch_recall_at_1(queries, docs, torch.tensor([0, 1, 2, 2])).item() == 1.0
    assert in_batch_recall_at_1(queries[:, None], docs[:, None]).item() == 0.5  # multi-vector, K = 1


def test_gather_is_identity_without_process_group():
    t = torch.randn(3, 4)
    assert gather_with_grad(t) is t


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"symmetric": 1}, "True or False"),
        ({"max_logit_scale": 0.0}, "> 0"),
        ({"max_logit_scale": math.inf}, "> 0"),
        ({"max_logit_scale": True}, "> 0"),
    ],
)
def test_invalid_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContrastiveLoss(**kwargs)


def test_matryoshka_loss_sums_the_loss_of_renormalised_prefixes():
    """q1 = (1, 0, 0, 0), q2 = (0.6, 0, 0.8, 0), documents = queries, scale 10. At 4 dims the scores are [[1, .6],
    [.6, 1]]: every row's cross-entropy is log(1 + e^(-0.4 * 10)). Their 2-dim prefixes, re-normalised, are both
    (1, 0): all scores equal, cross-entropy log 2. The loss is the weighted sum of the two."""
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.6, 0.0, 0.8, 0.0]])
    scale = torch.tensor(math.log(10.0))
    full, prefix = math.log(1 + math.exp(-4.0)), math.log(2)
    torch.testing.assert_close(MatryoshkaLoss(ContrastiveLoss(), [4, 2])(q, q, scale), torch.tensor(full + prefix))
    weighted = MatryoshkaLoss(ContrastiveLoss(), [4, 2], weights=[1.0, 0.5])(q, q, scale)
    torch.testing.assert_close(weighted, torch.tensor(full + 0.5 * prefix))
    torch.testing.assert_close(MatryoshkaLoss(ContrastiveLoss(), [4])(q, q, scale), ContrastiveLoss()(q, q, scale))


def test_matryoshka_loss_truncates_hard_negatives_and_passes_ids():
    q, d, negs, scale = _unit(3, 8, seed=1), _unit(3, 8, seed=2), _unit(6, 8, seed=3), torch.tensor(math.log(10.0))
    ids, neg_ids = torch.tensor([5, 5, 7]), torch.tensor([1, 2, 3, 7, 8, 9])
    inner = ContrastiveLoss()
    expected = sum(
        inner(F.normalize(q[:, :dim], dim=-1), F.normalize(d[:, :dim], dim=-1), scale, doc_ids=ids,
              neg_doc_embeds=F.normalize(negs[:, :dim], dim=-1), neg_doc_ids=neg_ids)
        for dim in (8, 3)
    )  # fmt: skip
    got = MatryoshkaLoss(inner, [8, 3])(q, d, scale, doc_ids=ids, neg_doc_embeds=negs, neg_doc_ids=neg_ids)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"dims": []}, "non-empty list"), ({"dims": [8, 0]}, "positive integers"), ({"dims": [8, 4.0]}, "positive"),
     ({"dims": [8, 4], "weights": [1.0]}, "one weight per size")],
)  # fmt: skip
def test_matryoshka_loss_refuses_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatryoshkaLoss(ContrastiveLoss(), **kwargs)
    with pytest.raises(ValueError, match="exceed the embeddings' size 8"):
        MatryoshkaLoss(ContrastiveLoss(), [16, 8])(_unit(2, 8), _unit(2, 8), torch.tensor(0.0))


def test_invalid_inputs_raise():
    q, scale = _unit(3, 8), torch.tensor(0.0)
    with pytest.raises(ValueError, match="same batch size"):
        ContrastiveLoss()(q, q[:2], scale)
    with pytest.raises(ValueError, match="doc_ids must have shape"):
        ContrastiveLoss()(q, q, scale, doc_ids=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="needs doc_ids"):
        ContrastiveLoss()(q, q, scale, neg_doc_embeds=q, neg_doc_ids=torch.tensor([1, 2, 3]))


@pytest.mark.slow
@pytest.mark.processes
def test_ddp_matches_single_process(tmp_path):
    """Pins the local-vs-gathered scheme under 2 gloo processes, with duplicate ids and hard negatives:
    the mean of the rank losses is the single-process loss on the global batch, and the DDP-averaged
    gradients (through the gather) equal the single-process gradients; recall@1 is the global one."""
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    processes.run([*cmd, REPO / "tests" / "ret2" / "training" / "dist_loss_worker.py", tmp_path], cwd=REPO, env=env,
                  timeout=300, check=True)  # fmt: skip
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for n_vectors in (1, 3):
        ref = ranks[0][n_vectors]
        mean_loss = torch.stack([r[n_vectors]["loss"] for r in ranks]).mean()
        torch.testing.assert_close(mean_loss, ref["ref_loss"], atol=1e-6, rtol=0)
        for r in ranks:
            torch.testing.assert_close(r[n_vectors]["recall"], ref["ref_recall"])
            for name, grad in ref["ref_grads"].items():
                assert grad.abs().max() > 1e-3, name  # a zero gradient would pass trivially
                assert (r[n_vectors]["grads"][name] - grad).abs().max() <= 1e-5, (n_vectors, name)
    for r in ranks:
        assert "same shape on every rank" in r["ragged_error"]


def test_multi_positive_infonce_matches_hand_computed_values():
    """positive_ids: each query's softmax mass on all its positive columns (in-batch documents and extra columns),
    each document once. Orthonormal rows, scale 1: query i scores 1 on document i and 0 elsewhere."""
    q = d = torch.eye(3, 4)  # (B, D)
    scale, ids = torch.tensor(0.0), torch.tensor([10, 11, 12])
    logits = q @ d.T  # (3, 3)
    # query 0's positives: documents 10 and 11 (in the batch); queries 1 and 2: their own only (rows padded by repeats)
    positive_ids = torch.tensor([[10, 11], [11, 11], [12, 12]])
    one_way = ContrastiveLoss(symmetric=False)(q, d, scale, doc_ids=ids, positive_ids=positive_ids)
    row0 = logits[0].logsumexp(0) - logits[0, [0, 1]].logsumexp(0)  # -log((e + 1) / (e + 2))
    expected = (row0 + _nll(logits[1], 1, [0, 1, 2]) + _nll(logits[2], 2, [0, 1, 2])) / 3
    torch.testing.assert_close(one_way, expected)
    torch.testing.assert_close(row0, torch.tensor(math.log((math.e + 2) / (math.e + 1))))
    # symmetric: the doc -> query direction keeps one positive per document
    both = ContrastiveLoss()(q, d, scale, doc_ids=ids, positive_ids=positive_ids)
    torch.testing.assert_close(both, (expected + ContrastiveLoss(symmetric=False)(d, q, scale)) / 2)
    # only its own positive listed: exactly the single-positive loss
    own = ContrastiveLoss()(q, d, scale, doc_ids=ids, positive_ids=ids[:, None])
    torch.testing.assert_close(own, ContrastiveLoss()(q, d, scale, doc_ids=ids))


def test_multi_positive_counts_extra_positive_columns_once():
    """Extra positives travel with the hard negatives (their ids in neg_doc_ids): one of query 0's positives scored
    as an extra column counts in its numerator; a repeated extra positive (padding) and a copy of the own document
    are left out of the softmax altogether."""
    q = d = torch.eye(2, 4)
    extra = torch.eye(4)[[2, 2, 0, 3]]  # columns: doc 20 (twice), a copy of doc 10, doc 21
    scale, ids, extra_ids = torch.tensor(0.0), torch.tensor([10, 11]), torch.tensor([20, 20, 10, 21])
    positive_ids = torch.tensor([[10, 20], [11, 11]])
    loss = ContrastiveLoss(symmetric=False)(q, d, scale, doc_ids=ids, neg_doc_embeds=extra, neg_doc_ids=extra_ids,
                                            positive_ids=positive_ids)  # fmt: skip
    # query 0 (e_0): columns [doc 10, doc 11, doc 20, doc 20 (dropped), doc 10 copy (dropped), doc 21] = [1, 0, 0, 0]
    row0 = math.log(math.e + 3) - math.log(math.e + 1)
    # query 1 (e_1): [0, 1, 0, 0, 0, 0]: the repeat and the copy of doc 10 are negatives of query 1, kept
    row1 = math.log(math.e + 5) - 1.0
    torch.testing.assert_close(loss, torch.tensor((row0 + row1) / 2))
