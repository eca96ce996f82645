"""Per-token log-probs of completions under a model, with the prompt's images."""

from __future__ import annotations

import torch

from spark_vl.rollout.inputs import encode_prompts


def completion_batch(processor, conversations: list[list[dict]], completions: list[list[int]],
                     device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions, ready for a forward pass.

    `mm_token_type_ids` is extended with zeros over the completion: without it Qwen-VL's 3-D
    rotary positions are wrong there and log-probs drift from those of generation.
    """
    inputs = encode_prompts(processor, conversations)
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


def policy_logits(logits: torch.Tensor, temperature: float, suppress_ids: list[int]) -> torch.Tensor:
    """The logits the rollout engines sample from: temperature-scaled, vision tokens excluded.
    Training and both engines use this same distribution, so their log-probs agree."""
    logits = logits.float() / temperature
    if suppress_ids:
        index = torch.tensor(suppress_ids, device=logits.device)
        logits = logits.index_fill(-1, index, -1e9)
    return logits


def completion_logps(model, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False,
                     suppress_ids: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-token log-probs, per-token entropy or None), both (B, T) over the completion."""
    completion_ids = batch["completion_ids"]
    width = completion_ids.shape[1]
    model_inputs = {k: v for k, v in batch.items() if k not in ("completion_ids", "completion_mask")}
    logits = model(**model_inputs, logits_to_keep=width + 1).logits[:, :-1, :]
    logits = policy_logits(logits, temperature, list(suppress_ids))
    logps = torch.log_softmax(logits, dim=-1)
    per_token = logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logps.exp() * logps).sum(-1)
    return per_token, entropy
