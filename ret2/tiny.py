"""Small ReT-2 models and processors built from configs alone, offline: for tests, benchmarks and the demo.

The tokenizer is word-level over a given vocabulary (built with the `tokenizers` library); the image processor is
CLIP's, built from arguments. Nothing is downloaded.
"""

import re

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPImageProcessorPil, CLIPTextConfig, CLIPVisionConfig, PreTrainedTokenizerFast

from configuration_ret2 import Ret2Config
from modeling_ret2 import Ret2Model, Ret2Processor

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]
BASIC_WORDS = (
    "a an the of in on at to with and or is it its this that for from by find retrieve image photo picture caption "
    "describing described matching matches match given following provided query question answer passage wikipedia "
    "news fashion everyday day-to-day similar looks like make change turn into instead same but other"
).split()


def word_tokenizer(words: list[str], model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer that wraps every text in <bos> ... <eos>."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(set(w.lower() for w in words)):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def words_of(texts: list[str]) -> list[str]:
    """The distinct lower-cased words of some texts, split as `word_tokenizer` splits them."""
    return sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})


def tiny_processor(words: list[str] = (), image_size: int = 32, model_max_length: int = 64) -> Ret2Processor:
    tokenizer = word_tokenizer(BASIC_WORDS + list(words), model_max_length)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return Ret2Processor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_config(
    processor: Ret2Processor,
    width: int = 32,
    depth: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    **ret2_kwargs,
) -> Ret2Config:
    """A ReT-2 config with CLIP towers of the given width and depth, sized to the processor's vocabulary."""
    tokenizer = processor.tokenizer
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=depth,
        num_attention_heads=max(1, width // 16),
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=depth,
        num_attention_heads=max(1, width // 16),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=width,
    )
    # The cell's linears start at std 1/sqrt(width), the scale the default 0.02 has at width 1024: at the tiny width
    # 0.02 leaves the attended modalities so faint that every item starts at the same embedding and trains slowly.
    defaults = dict(
        hidden_size=2 * width, num_latent_tokens=8, num_attention_heads=2, embedding_dim=width,
        initializer_range=(2 * width) ** -0.5,
    )  # fmt: skip
    return Ret2Config(text_config=text_config, vision_config=vision_config, **{**defaults, **ret2_kwargs})


def tiny_model_and_processor(
    words: list[str] = (), seed: int = 0, image_size: int = 32, **config_kwargs
) -> tuple[Ret2Model, Ret2Processor]:
    """A randomly initialised tiny ReT-2 (seeded) and its processor."""
    processor = tiny_processor(words, image_size=image_size)
    config = tiny_config(processor, image_size=image_size, **config_kwargs)
    torch.manual_seed(seed)
    return Ret2Model(config).eval(), processor
