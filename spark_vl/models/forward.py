"""Per-token log-probs of completions under a model, with the prompt's images."""

from __future__ import annotations

import torch

from spark_vl.models.inputs import VISUALS, encode_prompts

# Batch entries that are not model inputs.
BATCH_ONLY = ("completion_ids", "completion_mask", "distinct_image_grid_thw", "image_index", "distinct_video_grid_thw",
              "video_index")


def completion_batch(processor, conversations: list[list[dict]], completions: list[list[int]],
                     device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions, ready for a forward pass.

    `mm_token_type_ids` is extended with zeros over the completion: without it Qwen-VL's 3-D
    rotary positions are wrong there and log-probs drift from those of generation. Each distinct
    image and video is encoded once (`shared_features`): the responses of a group share their prompt.
    """
    inputs = encode_prompts(processor, conversations, share_visuals=True)
    width = max(len(c) for c in completions)
    pad = processor.tokenizer.pad_token_id
    ids = torch.full((len(completions), width), pad, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    for i, completion in enumerate(completions):
        ids[i, :len(completion)] = torch.tensor(completion, dtype=torch.long)
        mask[i, :len(completion)] = 1
    batch = dict(inputs)
    batch["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
    batch["attention_mask"] = torch.cat([inputs["attention_mask"], mask], dim=1)
    if "mm_token_type_ids" in inputs:
        batch["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], dim=1)
    batch["completion_ids"] = ids
    batch["completion_mask"] = mask
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def policy_logits(logits: torch.Tensor, temperature: float | torch.Tensor, suppress_ids: list[int]) -> torch.Tensor:
    """The logits the rollout engines sample from: temperature-scaled (one temperature, or one
    per row), vision tokens excluded. Training and both engines use this same distribution, so
    their log-probs agree."""
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(logits.device).view(-1, *[1] * (logits.dim() - 1))
    logits = logits.float() / temperature
    if suppress_ids:
        index = torch.tensor(suppress_ids, device=logits.device)
        logits = logits.index_fill(-1, index, -1e9)
    return logits


def shared_features(model, batch: dict[str, torch.Tensor], kind: str):
    """The vision encoder's output for every image (or video) of the batch, computing each
    distinct one once; rows sharing it share its features, so their gradients add up as if each
    row had encoded its own copy."""
    module = getattr(model, "module", model)  # a DeepSpeed engine or the model itself
    pixels, grid, _ = VISUALS[kind]
    encode = module.get_image_features if kind == "image" else module.get_video_features
    features = encode(batch[pixels], batch[f"distinct_{grid}"], return_dict=True)
    index = batch[f"{kind}_index"].tolist()
    features.pooler_output = tuple(features.pooler_output[i] for i in index)
    if getattr(features, "deepstack_features", None) is not None:  # Qwen3-VL
        features.deepstack_features = [tuple(level[i] for i in index) for level in features.deepstack_features]
    return features


def completion_logps(model, batch: dict[str, torch.Tensor], temperature: float | torch.Tensor = 1.0,
                     with_entropy: bool = False, suppress_ids: list[int] = (),
                     entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-token log-probs, per-token entropy or None), both (B, T) over the completion; the
    entropy carries gradients only with `entropy_grad` (for an entropy bonus)."""
    completion_ids = batch["completion_ids"]
    width = completion_ids.shape[1]
    model_inputs = {k: v for k, v in batch.items() if k not in BATCH_ONLY}
    shared = {kind: shared_features(model, batch, kind) for kind in VISUALS if f"{kind}_index" in batch}
    if shared:
        model_inputs["mm_encoder_outputs"] = shared
        for kind in shared:
            del model_inputs[VISUALS[kind][0]]
    logits = model(**model_inputs, logits_to_keep=width + 1).logits[:, :-1, :]
    logits = policy_logits(logits, temperature, list(suppress_ids))
    logps = torch.log_softmax(logits, dim=-1)
    per_token = logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logps.exp() * logps).sum(-1)
    return per_token, entropy
