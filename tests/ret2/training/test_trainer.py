"""ContrastiveTrainer and the `ret2.training.train` CLI on synthetic M-BEIR data with tiny models: the one-forward loss
with hard negatives, a falling loss, exact resumption, LoRA (what trains, what stays bit-identical, the merged model
through remote code), and 2-process runs (slow) that match one process."""

import json
import os
import sys
from pathlib import Path

import pytest
import processes
import torch
from conftest import REPO
from remote_code import load_in_clean_process
from transformers import AutoModel, TrainingArguments

from ret2.data.synthetic import generate_mbeir
from ret2.training.collator import ContrastiveCollator, model_inputs
from ret2.training.loss import ContrastiveLoss
from ret2.training.lora import LORA_STATE_NAME, apply_lora
from ret2.tiny import tiny_model_and_processor, words_of
from ret2.commands.train import run as main
from ret2.training.arguments import DataArguments
from ret2.training.train import build_datasets
from ret2.training.trainer import ContrastiveTrainer


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """128 training queries (8 per M-BEIR row, every task), each with one hard negative."""
    return generate_mbeir(tmp_path_factory.mktemp("mbeir"), seed=0, n_per_task=4, pool_size=12, n_train_per_task=8,
                          image_size=32, m2kr=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets_cache"))


def cli_args(root, cache, output_dir, *args) -> list[str]:
    return [
        "--model", "tiny", "--data_root", str(root), "--output_dir", str(output_dir),
        "--dataset_cache_dir", cache, "--per_device_train_batch_size", "16", "--logging_steps", "1",
        "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--seed", "0", *args,
    ]  # fmt: skip


def logged_losses(trainer) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def test_compute_loss_is_the_loss_of_separately_encoded_sides(root, cache, tmp_path):
    """Hard negatives stacked under the documents by the collator, one forward, split after: the same loss as
    processing and encoding queries, documents and negatives separately."""
    train, _ = build_datasets(DataArguments(data_root=str(root), num_hard_negatives=2, dataset_cache_dir=cache), 0)
    model, processor = tiny_model_and_processor(words_of(list(train.texts())), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), remove_unused_columns=False, report_to="none")
    trainer = ContrastiveTrainer(model=model, args=args)
    examples = [train[i] for i in range(0, 128, 9)]
    batch = ContrastiveCollator(processor, root, num_hard_negatives=2)(examples)
    plain = ContrastiveCollator(processor, root)  # no negatives: each call processes one query and one doc side
    positives = plain(examples)
    negatives = plain([{"query": e["query"], "doc": n} for e in examples for n in e["negatives"]])

    def side(inputs, prefix):
        return {name.removeprefix(prefix): value for name, value in model_inputs(inputs).items() if name.startswith(prefix)}

    with torch.no_grad():
        loss = trainer.compute_loss(model.eval(), {name: value.to(args.device) for name, value in batch.items()})
        expected = ContrastiveLoss()(
            model.encode_queries(**side(positives, "query_")), model.encode_documents(**side(positives, "doc_")),
            model.logit_scale, positives["doc_ids"], model.encode_documents(**side(negatives, "doc_")),
            negatives["doc_ids"],
        )  # fmt: skip
    assert torch.equal(batch["neg_doc_ids"], negatives["doc_ids"])
    assert loss.item() > 1.0
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        ContrastiveTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))


def test_cli_trains_evaluates_and_saves_loadable_checkpoints(root, cache, tmp_path):
    """40 steps of the CLI: the loss falls well below its start (about log 16), evaluation reports loss and in-batch
    recall@1, and checkpoint and final folder load through AutoModel with the processor beside them."""
    out = tmp_path / "run"
    trainer = main(cli_args(root, cache, out, "--max_steps", "40", "--learning_rate", "1e-3", "--save_steps", "20",
                            "--dataloader_drop_last", "true", "--eval_fraction", "0.25"))
    losses = list(logged_losses(trainer).values())
    # a random model over 16 in-batch candidates starts near log 16 = 2.77 (exactly there only if every embedding
    # coincides; the tiny models start with spread-out embeddings)
    assert len(losses) == 40 and 2.0 < losses[0] < 4.5, losses[0]
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < first - 0.4, losses
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_loss"] > 0 and 0 < metrics["eval_recall@1"] <= 1
    for folder in (out / "checkpoint-20", out):
        assert {"config.json", "model.safetensors", "modeling_ret2.py", "processor_config.json",
                "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    loaded = AutoModel.from_pretrained(out, trust_remote_code=True)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.cpu()), name


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_continues_exactly(root, cache, tmp_path, mode):
    """6 steps straight vs 3 + resume: the same losses at steps 4-6 (to 1e-6), across the epoch boundary after
    step 4 (positives, negatives and instructions are drawn per epoch) and with dropout on (RNG restored)."""
    extra = ["--per_device_train_batch_size", "32", "--dataloader_drop_last", "true", "--num_hard_negatives", "1",
             "--learning_rate", "1e-3", "--save_steps", "3"]
    if mode == "lora":
        extra += ["--lora_r", "4", "--lora_dropout", "0.1"]
    straight = main(cli_args(root, cache, tmp_path / "straight", "--max_steps", "6", *extra))
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert (checkpoint / LORA_STATE_NAME).is_file() == (mode == "lora")
    resumed = main(cli_args(root, cache, tmp_path / "resumed", "--max_steps", "6", "--resume_from_checkpoint",
                            str(checkpoint), *extra))
    expected, got = logged_losses(straight), logged_losses(resumed)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]  # 1-3 come from the checkpoint's trainer state
    assert straight.state.epoch == resumed.state.epoch == 1.5
    for step in (4, 5, 6):
        assert abs(got[step] - expected[step]) < 1e-6, (step, got[step], expected[step])
    assert len({expected[step] for step in expected}) == 6


def test_resume_with_other_freeze_or_lora_flags_says_what_differs(root, cache, tmp_path):
    """A checkpoint records what it trained; resuming it frozen or with LoRA is refused, naming the difference."""
    extra = ["--per_device_train_batch_size", "32", "--save_steps", "1", "--max_steps", "1"]
    main(cli_args(root, cache, tmp_path / "full", *extra))
    checkpoint = str(tmp_path / "full" / "checkpoint-1")
    assert "text_model.embeddings.token_embedding.weight" in json.loads(
        (tmp_path / "full" / "checkpoint-1" / "trainable_parameters.json").read_text())
    resume = ["--max_steps", "2", "--resume_from_checkpoint", checkpoint]
    with pytest.raises(ValueError, match=r"only in the checkpoint: text_model \(\d+ tensors\); only in this run: none"):
        main(cli_args(root, cache, tmp_path / "frozen", *extra[:4], *resume, "--freeze_text_tower", "true"))
    with pytest.raises(ValueError, match=r"only in the checkpoint: text_model \(\d+ tensors\), vision_model \(\d+ "
                                         r"tensors\); only in this run: text_model LoRA adapters \(\d+ tensors\), "
                                         r"vision_model LoRA adapters .*--lora_\* flags of the run that wrote it"):
        main(cli_args(root, cache, tmp_path / "lora", *extra[:4], *resume, "--lora_r", "2"))


def test_lora_trains_adapters_encoders_and_logit_scale_only(root, cache, tmp_path):
    """Trainable: the LoRA matrices on the towers' attention projections, the ReT-2 encoder and logit_scale. After
    training steps every other weight is bit-identical, and the trainable ones moved."""
    out = tmp_path / "lora"
    trainer = main(cli_args(root, cache, out, "--max_steps", "3", "--learning_rate", "1e-2", "--lora_r", "4",
                            "--save_strategy", "no"))
    trained = trainer.model
    trainable = {name for name, p in trained.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n}
    assert lora and all(("text_model" in n or "vision_model" in n) and n.split(".")[-4] in
                        ("q_proj", "k_proj", "v_proj", "out_proj") for n in lora)
    assert len(lora) == 2 * 4 * 4 * 2  # A and B x 4 projections x 4 layers x 2 towers
    assert trainable - lora == {n for n, _ in trained.named_parameters()
                                if ".query_encoder." in n or n.endswith("logit_scale")}
    initial, _ = tiny_model_and_processor(words_of(list(trainer.train_dataset.texts())), seed=0)
    initial = apply_lora(initial, 4, 16.0, 0.05)
    before = dict(initial.named_parameters())
    after = {name: value.cpu() for name, value in trained.named_parameters()}
    for name, value in after.items():
        if name in trainable:
            assert not torch.equal(value, before[name]), name
        else:
            assert torch.equal(value, before[name]), name


@pytest.mark.slow
def test_merged_lora_model_round_trips_through_remote_code(root, cache, tmp_path):
    """--merge_lora: the final folder is a plain ReT-2 (no LoRA state) that a Hub user loads without our packages
    or peft, with the trained model's embeddings; the checkpoint's own merge (no peft merge) gives the same ones."""
    out = tmp_path / "lora"
    trainer = main(cli_args(root, cache, out, "--max_steps", "3", "--learning_rate", "1e-2", "--lora_r", "4",
                            "--save_steps", "3", "--merge_lora", "true"))
    assert not (out / LORA_STATE_NAME).exists() and (out / "checkpoint-3" / LORA_STATE_NAME).is_file()
    model, processor = trainer.model.eval(), trainer.processing_class
    train = trainer.train_dataset
    batch = ContrastiveCollator(processor, root)([train[i] for i in range(0, 128, 9)])
    queries = {k.removeprefix("query_"): v for k, v in batch.items() if k.startswith("query_")}
    with torch.no_grad():
        expected = model.encode_queries(**queries)
        checkpoint = AutoModel.from_pretrained(out / "checkpoint-3", trust_remote_code=True).eval()
        torch.testing.assert_close(checkpoint.encode_queries(**queries), expected, atol=1e-6, rtol=0)
    torch.save({"inputs": queries, "expected": expected}, tmp_path / "expected.pt")
    result = load_in_clean_process(tmp_path, f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        data = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            got = model.encode_queries(**data["inputs"])
        print((got - data["expected"]).abs().max().item())
    """)
    assert float(result.strip().splitlines()[-1]) < 1e-6


def run_torchrun(nproc: int, args: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "ret2.commands.train", *args]
    processes.run(cmd, cwd=cwd, env=env, timeout=600, check=True)


@pytest.mark.slow
@pytest.mark.processes
def test_two_processes_match_one(root, cache, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on CPU) runs the unchanged CLI and saves a loadable checkpoint. With
    dropout off, 2 x 4 samples give the weights of one process with 8 after an SGD step (hard negatives gathered
    across ranks), and the same eval loss and in-batch recall@1 on the held-out queries."""
    train, _ = build_datasets(DataArguments(data_root=str(root), dataset_cache_dir=cache), 0)
    model, processor = tiny_model_and_processor(words_of(list(train.texts())), seed=0, dropout=0.0,
                                                attention_dropout=0.0)
    start = tmp_path / "start"
    model.save_pretrained(start)
    processor.save_pretrained(start)
    common = ["--model", str(start), "--data_root", str(root), "--dataset_cache_dir", cache,
              "--max_steps", "1", "--save_steps", "1", "--optim", "sgd", "--learning_rate", "0.5",
              "--max_grad_norm", "0", "--num_hard_negatives", "1", "--eval_fraction", "0.25",
              "--per_device_eval_batch_size", "4", "--dataloader_drop_last", "true", "--disable_tqdm", "true",
              "--dataloader_pin_memory", "false", "--report_to", "none"]
    run_torchrun(2, [*common, "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "4"], tmp_path)
    one = main([*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "8",
                "--per_device_eval_batch_size", "8"])
    two = AutoModel.from_pretrained(tmp_path / "two" / "checkpoint-1", trust_remote_code=True)
    moved = 0
    for name, value in one.model.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], value, atol=2e-6, rtol=0, msg=name)
        moved += not torch.equal(value, model.state_dict()[name])
    assert moved > 100  # the step changed the towers and the cell
    metrics = [json.loads((tmp_path / run / "eval_results.json").read_text()) for run in ("one", "two")]
    for key in ("eval_loss", "eval_recall@1"):
        assert abs(metrics[0][key] - metrics[1][key]) < 1e-5, key


def test_matryoshka_dims_flag_sets_the_loss_and_the_saved_config(root, cache, tmp_path):
    """`--matryoshka_dims 32 8`: the Trainer's loss sums the contrastive loss at the 32- and 8-dim prefixes (its first
    step's loss is that sum on the first batch), the saved model's config records the sizes, and training that model
further keeps them."""
    from ret2.training.loss import MatryoshkaLoss

    out = tmp_path / "run"
    trainer = main(cli_args(root, cache, out, "--max_steps", "1", "--matryoshka_dims", "32", "8",
                            "--learning_rate", "0.0"))  # fmt: skip
    assert isinstance(trainer.loss, MatryoshkaLoss) and trainer.loss.dims == [32, 8]
    assert AutoModel.from_pretrained(out, trust_remote_code=True).config.matryoshka_dims == [32, 8]
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        outputs = model(**model_inputs(batch))
        parts = [ContrastiveLoss()(model.truncate_embeddings(outputs.query_embeds, d),
                                   model.truncate_embeddings(outputs.doc_embeds, d), outputs.logit_scale,
                                   doc_ids=batch["doc_ids"]) for d in (32, 8)]  # fmt: skip
        torch.testing.assert_close(trainer.compute_loss(model, batch), sum(parts))
    # continuing the saved model without the flag keeps its sizes (argparse: the last --model wins)
    again = main(cli_args(root, cache, tmp_path / "again", "--max_steps", "1", "--model", str(out)))
    assert isinstance(again.loss, MatryoshkaLoss) and again.loss.dims == [32, 8]
    with pytest.raises(ValueError, match=r"matryoshka_dims=\[64\] has sizes \[64\] above embedding_dim=32"):
        main(cli_args(root, cache, tmp_path / "bad", "--max_steps", "1", "--matryoshka_dims", "64"))
    with pytest.raises(ValueError, match="set it with --matryoshka_dims"):
        main(cli_args(root, cache, tmp_path / "bad", "--config_overrides", "matryoshka_dims=[8]"))
