"""Per-token log-probs of completions under a model, with the prompt's images."""

from __future__ import annotations

import torch

from spark_vl.models.inputs import VISUALS, encode_prompts, part_count

# Batch entries that are not model inputs.
BATCH_ONLY = ("completion_ids", "completion_mask", "distinct_image_grid_thw", "image_index", "distinct_video_grid_thw",
              "video_index", "image_per_row", "video_per_row", "pad_id")


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
    batch["pad_id"] = torch.tensor(pad)
    for kind, (pixels, _, _) in VISUALS.items():
        if pixels in batch:
            batch[f"{kind}_per_row"] = torch.tensor([part_count(conv, kind) for conv in conversations])
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def pack_rows(lengths: list[int]) -> list[list[int]]:
    """The batch's rows packed into bins no longer than its longest row (first fit, longest
    first): a bin's attention costs no more than a padded row's, and the padding is gone."""
    bins: list[list[int]] = []
    room: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((b for b, free in enumerate(room) if lengths[row] <= free), None)
        if fit is None:
            bins.append([row])
            room.append(max(lengths) - lengths[row])
        else:
            bins[fit].append(row)
            room[fit] -= lengths[row]
    return bins


def token_slots(batch: dict[str, torch.Tensor], packed: bool) -> int:
    """Token positions the forward computes: rows x width, padded or packed (`pack_rows`)."""
    lengths = batch["attention_mask"].sum(1).tolist()
    return len(pack_rows(lengths)) * max(lengths) if packed else batch["attention_mask"].numel()


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


def shared_features(model, batch: dict[str, torch.Tensor], kind: str, order: list[int] | None = None):
    """The vision encoder's output for every image (or video) of the batch, computing each
    distinct one once; rows sharing it share its features, so their gradients add up as if each
    row had encoded its own copy. `order`: the batch's images in the order the input holds them
    (packed rows), if not the rows' own."""
    module = getattr(model, "module", model)  # a DeepSpeed engine or the model itself
    pixels, grid, _ = VISUALS[kind]
    encode = module.get_image_features if kind == "image" else module.get_video_features
    features = encode(batch[pixels], batch[f"distinct_{grid}"], return_dict=True)
    index = batch[f"{kind}_index"].tolist()
    if order is not None:
        index = [index[i] for i in order]
    features.pooler_output = tuple(features.pooler_output[i] for i in index)
    if getattr(features, "deepstack_features", None) is not None:  # Qwen3-VL
        features.deepstack_features = [tuple(level[i] for i in index) for level in features.deepstack_features]
    return features


def _with_shared_visuals(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with `shared_features`' keys, each image its own when no two rows share one."""
    batch = dict(batch)
    for kind, (pixels, grid, _) in VISUALS.items():
        if pixels in batch and f"{kind}_index" not in batch:
            batch[f"distinct_{grid}"] = batch[grid]
            batch[f"{kind}_index"] = torch.arange(len(batch[grid]))
    return batch


def _rope_index(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Qwen-VL's 3-D rotary positions of the padded batch, (3, B, L), as its own forward makes them."""
    module = getattr(model, "module", model)
    rope = next(m for m in module.modules() if hasattr(type(m), "get_rope_index"))
    if "mm_token_type_ids" not in batch:
        raise ValueError("packed sequences need the processor's mm_token_type_ids (Qwen-VL processors of "
                         "transformers 5 return them); set train.padding_free=false")
    position, _ = rope.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch.get("image_grid_thw"),
                                      batch.get("video_grid_thw"), second_per_grid_ts=batch.get("second_per_grid_ts"),
                                      attention_mask=batch["attention_mask"])
    return position


def _packed(model, batch: dict[str, torch.Tensor]):
    """The batch's sequences packed without padding (`pack_rows`): model inputs with 4-row position
    ids (text positions per sequence first, from which the attention is masked to each sequence,
    then Qwen's 3-D ones), the images' order in them, the positions whose logits are kept, and
    where each completion token's logits are among them, (B, T) rows and columns."""
    mask, ids = batch["attention_mask"], batch["input_ids"]
    rope = _rope_index(model, batch)
    real = [row.nonzero().squeeze(-1) for row in mask]
    lengths = [len(r) for r in real]
    bins, width = pack_rows(lengths), max(lengths)
    device = ids.device
    packed_ids = torch.full((len(bins), width), int(batch["pad_id"]), dtype=ids.dtype, device=device)
    positions = torch.arange(width, device=device).repeat(4, len(bins), 1)  # the tail is a block of its own
    types = torch.zeros((len(bins), width), dtype=ids.dtype, device=device)
    start = {}
    for b, rows in enumerate(bins):
        offset = 0
        for row in rows:
            n = lengths[row]
            packed_ids[b, offset:offset + n] = ids[row, real[row]]
            positions[0, b, offset:offset + n] = torch.arange(n, device=device)
            positions[1:, b, offset:offset + n] = rope[:, row, real[row]]
            types[b, offset:offset + n] = batch["mm_token_type_ids"][row, real[row]]
            start[row] = (b, offset)
            offset += n
    inputs = {"input_ids": packed_ids, "position_ids": positions, "mm_token_type_ids": types}
    order = {}
    for kind, (pixels, grid, extra) in VISUALS.items():
        if f"{kind}_per_row" in batch:
            first = [0, *torch.cumsum(batch[f"{kind}_per_row"], 0).tolist()]
            order[kind] = [i for rows in bins for row in rows for i in range(first[row], first[row + 1])]
            inputs.update({key: batch[key][order[kind]] for key in (grid, *extra) if key in batch})
    completion = batch["completion_mask"].sum(1).tolist()
    width_t = batch["completion_ids"].shape[1]
    targets = [[start[row][1] + lengths[row] - completion[row] - 1 + min(j, max(completion[row] - 1, 0))
                for j in range(width_t)] for row in range(len(lengths))]  # padding points at a real token
    rows_of = torch.tensor([[start[row][0]] * width_t for row in range(len(lengths))], device=device)
    keep = sorted({t for row in targets for t in row})
    column = {t: i for i, t in enumerate(keep)}
    columns = torch.tensor([[column[t] for t in row] for row in targets], device=device)
    return inputs, order, torch.tensor(keep, device=device), (rows_of, columns)


def completion_logps(model, batch: dict[str, torch.Tensor], temperature: float | torch.Tensor = 1.0,
                     with_entropy: bool = False, suppress_ids: list[int] = (), entropy_grad: bool = False,
                     packed: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-token log-probs, per-token entropy or None), both (B, T) over the completion; the
    entropy carries gradients only with `entropy_grad` (for an entropy bonus). `packed`: the
    sequences go through the model packed without padding (`train.padding_free`); the same values."""
    completion_ids = batch["completion_ids"]
    width = completion_ids.shape[1]
    model_inputs = {k: v for k, v in batch.items() if k not in BATCH_ONLY}
    order: dict[str, list[int]] = {}
    if packed:
        batch = _with_shared_visuals(batch)
        model_inputs, order, keep, (rows, columns) = _packed(model, batch)
    shared = {kind: shared_features(model, batch, kind, order.get(kind)) for kind in VISUALS
              if f"{kind}_index" in batch}
    if shared:
        model_inputs["mm_encoder_outputs"] = shared
        for kind in shared:
            model_inputs.pop(VISUALS[kind][0], None)
    if packed:
        # No cache: with one, transformers masks causally only, across the packed sequences.
        logits = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits[rows, columns]
    else:
        logits = model(**model_inputs, logits_to_keep=width + 1).logits[:, :-1, :]
    logits = policy_logits(logits, temperature, list(suppress_ids))
    logps = torch.log_softmax(logits, dim=-1)
    per_token = logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logps.exp() * logps).sum(-1)
    return per_token, entropy
