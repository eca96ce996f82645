"""Build a tiny Qwen-VL checkpoint offline: locally trained tokenizer, stock processor and model.

The result is a standard Hugging Face directory, loaded like any real checkpoint.
Same config and seed give the same tokenizer and the same weights.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from spark_vl.config import ModelConfig, TinyModelConfig
from spark_vl.data.tasks import corpus_lines
from spark_vl.prompts import Templates

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# (config class, processor class, video processor class, image patch size) per family
FAMILIES = {
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", 14),
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLProcessor", "Qwen2VLVideoProcessor", 14),
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLProcessor", "Qwen3VLVideoProcessor", 16),
}


def chat_template() -> str:
    return resources.files("spark_vl.models").joinpath("chat_template.jinja").read_text()


def tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizer learns from: task questions and answers, SPARK templates, chat roles."""
    templates = Templates.load()
    lines = corpus_lines() + [t["text"] for t in templates.pointwise + templates.pairwise]
    lines += templates.reflect_cot + templates.reflect_answer + [templates.judge_reply, templates.pairwise_reply]
    return lines + ["system\nYou are a helpful assistant.", "user\n", "assistant\n"]


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on our own text, carrying Qwen's special tokens and chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    bpe.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.chat_template = chat_template()
    return tokenizer


def _model_config(tiny: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> transformers.PretrainedConfig:
    config_cls = getattr(transformers, FAMILIES[tiny.family][0])
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]}
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    head_dim = tiny.hidden_size // tiny.num_heads
    half = head_dim // 2
    mrope = [half // 2, half // 4, half - half // 2 - half // 4]  # e.g. [8, 4, 4] for head size 32
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,  # vLLM's in-place weight reload leaves a tied head at the old weights
    )
    vision = dict(
        depth=tiny.vision_depth,
        hidden_size=tiny.vision_hidden_size,
        num_heads=tiny.vision_heads,
        spatial_merge_size=2,
        temporal_patch_size=2,
        patch_size=FAMILIES[tiny.family][3],
    )
    if tiny.family == "qwen2_5_vl":
        vision.update(intermediate_size=2 * tiny.vision_hidden_size, out_hidden_size=tiny.hidden_size,
                      fullatt_block_indexes=list(range(tiny.vision_depth)), window_size=112)
    elif tiny.family == "qwen2_vl":
        vision.update(embed_dim=tiny.vision_hidden_size, hidden_size=tiny.hidden_size, mlp_ratio=2)
    else:
        text["head_dim"] = head_dim
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(intermediate_size=2 * tiny.vision_hidden_size, out_hidden_size=tiny.hidden_size,
                      num_position_embeddings=64, deepstack_visual_indexes=[])
    config = config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    config.eos_token_id = eos_id
    config.pad_token_id = pad_id
    return config


def build_processor(family: str, tokenizer: PreTrainedTokenizerFast, min_pixels: int, max_pixels: int):
    _, processor_name, video_name, patch = FAMILIES[family]
    image_processor = transformers.Qwen2VLImageProcessor(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    video_processor = getattr(transformers, video_name)(patch_size=patch)
    processor_cls = getattr(transformers, processor_name)
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                         video_processor=video_processor, chat_template=chat_template())


def build_tiny_model(model_config: ModelConfig, out_dir: str | Path) -> Path:
    """Write a tiny, randomly initialised Qwen-VL checkpoint (model, tokenizer, processor) to out_dir.

    Built in a staging folder and renamed into place, so out_dir is either complete or absent."""
    tiny = model_config.tiny
    out = Path(out_dir)
    tokenizer = build_tokenizer(tiny.vocab_size)
    config = _model_config(tiny, tokenizer)
    torch.manual_seed(tiny.seed)
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]
    model.generation_config.pad_token_id = config.pad_token_id
    processor = build_processor(tiny.family, tokenizer, model_config.min_pixels, model_config.max_pixels)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
