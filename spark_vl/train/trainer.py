"""The joint training step: GRPO on solve, judge and reflection rollouts, on a DeepSpeed engine."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from spark_vl.config import RunConfig, save_model_config
from spark_vl.models import load_model, vision_token_ids
from spark_vl.models.forward import completion_batch, completion_logps, token_slots
from spark_vl.models.inputs import encode_prompts
from spark_vl.records import RolloutGroup
from spark_vl.runio import logger
from spark_vl.train.engine import build_engine
from spark_vl.train.grpo import LossOptions, grpo_loss, loss_normaliser
from spark_vl.train.lora import ADAPTER_DIR, add_adapters, load_adapter_weights, merged_state_dict
from spark_vl.train.schedule import mini_batches, token_budget_chunks
from spark_vl.train.sequences import Sequence, credit_mask, sequences_with_signal, token_advantages

class PolicyTrainer:
    """Holds the policy as a DeepSpeed engine and the frozen reference model for the KL term.

    With `train.lora.rank` > 0 (and `adapters`) the engine holds the reference (or given) policy
    with LoRA adapters, loaded from `policy_dir/adapter` when it has one; the reference is the same
    module with its adapters disabled. The warm-up passes `adapters=False`: it fine-tunes in full.
    """

    def __init__(self, config: RunConfig, processor, policy_dir: Path, reference_dir: Path | None,
                 lr: float | None = None, adapters: bool = True):
        self.config = config
        self.processor = processor
        self.suppress = vision_token_ids(processor.tokenizer)
        train = config.train
        self.lora = train.lora if adapters and train.lora.rank > 0 else None
        model = load_model(reference_dir if self.lora and reference_dir else policy_dir, config.model.dtype)
        self.device = next(model.parameters()).device
        if train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
            if self.lora:
                model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a graph
        if self.lora:
            model = add_adapters(model, self.lora)
            if (Path(policy_dir) / ADAPTER_DIR).exists():
                load_adapter_weights(model, Path(policy_dir) / ADAPTER_DIR)
        model.train()
        self.engine = build_engine(model, train.deepspeed_config, train.micro_batch_size, lr or train.lr,
                                   train.max_grad_norm)
        self.loss_options = LossOptions(train.clip_eps, train.clip_eps_high, train.kl_coef, train.entropy_coef,
                                        train.loss_agg_mode, train.kl_loss_type, train.loss_mode,
                                        train.tis_imp_ratio_cap)
        self.reference = None
        if reference_dir is not None and train.kl_coef > 0 and not self.lora:
            self.reference = load_model(reference_dir, config.model.dtype, self.device).eval()
            self.reference.requires_grad_(False)

    @property
    def model(self):
        return self.engine.module

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank()

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size()

    def grpo_step(self, groups: list[RolloutGroup], mid_step: Callable[[], None] | None = None,
                  seed: int = 0, lr: float | None = None) -> dict[str, float]:
        """`train.updates_per_batch` passes over every sequence with signal, each pass one optimizer
        step per mini-batch (`train.ppo_mini_batch_size` groups, split with `seed`), in
        micro-batches; with several workers each takes every world_size-th sequence of a mini-batch
        and the gradients are averaged. Loss is averaged over the steps; KL, entropy and clipping
        over the tokens of a pass. `mid_step` runs once, before the first backward (a fault point);
        `lr` (`scheduled_lr`) is the rate of these steps, None: the rate the trainer was built with."""
        train = self.config.train
        if lr is not None:
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
        self._prompt_lengths: dict[int, int] = {}
        sequences, flat_groups = sequences_with_signal(groups, self.config, self.processor.tokenizer)
        stats = {"train/flat_groups": float(flat_groups), "train/sequences": float(len(sequences)),
                 "train/lr": self.engine.optimizer.param_groups[0]["lr"]}
        if not sequences:
            logger.info("no group with differing rewards: no update this iteration")
            return {**stats, "train/loss": 0.0, "train/kl": 0.0, "train/entropy": 0.0, "train/clip_frac": 0.0}
        total_tokens = sum(len(s.completion) for s in sequences)
        steps = mini_batches(sequences, train.ppo_mini_batch_size, seed)
        if train.tis_imp_ratio_cap is not None:
            self._proximal_logps(steps)
        sums = torch.zeros(7, dtype=torch.float64)
        for update in range(train.updates_per_batch):
            for i, step in enumerate(steps):
                normaliser = loss_normaliser(train.loss_agg_mode, sum(len(s.completion) for s in step), len(step),
                                             self.config.rollout.max_new_tokens)
                sums += self._update(step, normaliser, mid_step if update == i == 0 else None)
        if self.world_size > 1:  # on the engine's device: NCCL reduces CUDA tensors only
            sums = sums.to(self.device)
            torch.distributed.all_reduce(sums)
        loss_sum, kl_sum, entropy_sum, clipped, tokens, tis_weight, slots = (sums / train.updates_per_batch).tolist()
        if train.tis_imp_ratio_cap is not None:
            stats["train/tis_weight"] = tis_weight / total_tokens
        return {**stats, "train/optimizer_steps": float(len(steps) * train.updates_per_batch),
                "train/tokens": tokens, "train/padding_frac": 1.0 - tokens / slots,
                "train/loss": loss_sum / len(steps), "train/kl": kl_sum / total_tokens,
                "train/entropy": entropy_sum / total_tokens, "train/clip_frac": clipped / total_tokens}

    def _chunks(self, sequences: list[Sequence]) -> list[list[Sequence]]:
        """This worker's share of a step (every world_size-th sequence) in micro-batches of
        `train.micro_batch_size` rows, or filled up to `train.max_tokens_per_micro_batch`; every
        worker gets the same number of them, so their collectives pair up (some may be empty)."""
        mine = sequences[self.rank::self.world_size]
        budget = self.config.train.max_tokens_per_micro_batch
        if budget is None:
            n_chunks = math.ceil(math.ceil(len(sequences) / self.world_size) / self.config.train.micro_batch_size)
            size = max(1, math.ceil(len(mine) / n_chunks))
            return [mine[i * size:(i + 1) * size] for i in range(n_chunks)]
        sizes = [(self._prompt_tokens(s.conversation), len(s.completion)) for s in mine]
        chunks = [[mine[i] for i in chunk] for chunk in token_budget_chunks(sizes, budget)]
        count = torch.tensor([len(chunks)], device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        return chunks + [[] for _ in range(int(count) - len(chunks))]

    def _prompt_tokens(self, conversation: list[dict]) -> int:
        """The prompt's length in tokens, image tokens included; once per conversation of a step
        (a group's sequences share theirs)."""
        key = id(conversation)
        if key not in self._prompt_lengths:
            self._prompt_lengths[key] = encode_prompts(self.processor, [conversation])["input_ids"].shape[1]
        return self._prompt_lengths[key]

    def _proximal_logps(self, steps: list[list[Sequence]]) -> None:
        """Each sequence's log-probabilities under the trainer's policy before this batch's updates,
        in the chunks the updates take (a worker with an empty chunk scores another sequence, so
        that ZeRO-3's gathers pair up): the PPO ratio is taken against these, and the rollout
        engine's own become the behaviour the correction weighs by."""
        with torch.no_grad():
            for step in steps:
                for chunk in self._chunks(step):
                    rows = chunk or step[:1]
                    batch = completion_batch(self.processor, [s.conversation for s in rows],
                                             [s.completion for s in rows], self.device)
                    temperature = torch.tensor([s.temperature for s in rows], device=self.device)
                    logps, _ = completion_logps(self.engine, batch, temperature, suppress_ids=self.suppress,
                                                packed=self.config.train.padding_free)
                    for row, seq in enumerate(chunk):
                        seq.proximal_logps = logps[row, :len(seq.completion)].tolist()

    def _update(self, sequences: list, batch_normaliser: float,
                mid_step: Callable[[], None] | None = None) -> torch.Tensor:
        """One optimizer step; returns this worker's sums of loss, KL, entropy, clipped tokens,
        tokens and rollout-correction weights."""
        train = self.config.train
        # DeepSpeed averages gradients over workers: normalise each worker's share accordingly.
        normaliser = batch_normaliser / self.world_size
        chunks = self._chunks(sequences)
        loss_sum = kl_sum = clipped = entropy_sum = tokens = tis_weight = slots = 0.0
        for i, chunk in enumerate(chunks):
            self.engine.set_gradient_accumulation_boundary(i == len(chunks) - 1)
            if not chunk:  # fewer sequences than workers: take part in the average with zeros
                self.engine.backward(sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0)
                continue
            batch = completion_batch(self.processor, [s.conversation for s in chunk], [s.completion for s in chunk],
                                     self.device)
            mask = credit_mask(batch["completion_mask"], chunk)
            tokens += float(batch["attention_mask"].sum())  # prompt and completion tokens, padding not
            slots += float(token_slots(batch, train.padding_free))
            behaviour = torch.zeros(mask.shape, device=self.device)
            for row, seq in enumerate(chunk):
                behaviour[row, :len(seq.old_logps)] = torch.tensor(seq.old_logps)
            old = behaviour
            if train.tis_imp_ratio_cap is not None:
                old = torch.zeros(mask.shape, device=self.device)
                for row, seq in enumerate(chunk):
                    old[row, :len(seq.proximal_logps)] = torch.tensor(seq.proximal_logps)
            advantages = token_advantages(mask, chunk)
            temperature = torch.tensor([s.temperature for s in chunk], device=self.device)
            logps, entropy = completion_logps(self.engine, batch, temperature, True, self.suppress,
                                              entropy_grad=train.entropy_coef > 0, packed=train.padding_free)
            if self.lora and train.kl_coef > 0:
                with torch.no_grad(), self.model.disable_adapter():
                    ref, _ = completion_logps(self.model, batch, temperature, suppress_ids=self.suppress,
                                              packed=train.padding_free)
            elif self.reference is not None:
                with torch.no_grad():
                    ref, _ = completion_logps(self.reference, batch, temperature, suppress_ids=self.suppress,
                                              packed=train.padding_free)
            else:
                ref = logps.detach()
            loss, chunk_stats = grpo_loss(logps, old, ref, advantages, mask, normaliser, self.loss_options, entropy,
                                          behaviour)
            if mid_step is not None and i == 0:
                mid_step()
            self.engine.backward(loss)
            loss_sum += loss.item()
            kl_sum += chunk_stats["kl_sum"]
            clipped += chunk_stats["clipped_sum"]
            entropy_sum += float((entropy.detach() * mask).sum())
            tis_weight += chunk_stats["tis_weight_sum"]
        self.engine.step()
        return torch.tensor([loss_sum / self.world_size, kl_sum, entropy_sum, clipped, tokens, tis_weight, slots],
                            dtype=torch.float64)

    def sft_step(self, conversations: list[list[dict]], targets: list[list[int]]) -> float:
        """One supervised step (mean token cross-entropy of the targets), used by the warm-up."""
        micro = self.config.train.micro_batch_size
        total_tokens = sum(len(t) for t in targets)
        loss_sum = 0.0
        starts = list(range(0, len(targets), micro))
        for i, start in enumerate(starts):
            batch = completion_batch(self.processor, conversations[start:start + micro],
                                     targets[start:start + micro], self.device)
            self.engine.set_gradient_accumulation_boundary(i == len(starts) - 1)
            logps, _ = completion_logps(self.engine, batch)
            loss = -(logps * batch["completion_mask"]).sum() / total_tokens
            self.engine.backward(loss)
            loss_sum += loss.item()
        self.engine.step()
        return loss_sum

    def save(self, hf_dir: Path, ds_dir: Path | None = None, tag: str | None = None,
             before_publish: Callable[[], None] | None = None) -> None:
        """DeepSpeed state first (optimizer included; every worker writes its part), then the HF
        policy renamed into place by rank 0: an existing `hf_dir` means the whole step was saved.
        `before_publish` runs just before that rename (a fault point)."""
        if ds_dir is not None:
            self.engine.save_checkpoint(str(ds_dir), tag=tag)
        # ZeRO-3 shards the weights over workers: gather a full copy (all workers take part).
        zero3 = self.engine.zero_optimization_stage() == 3
        state = self.engine._zero3_consolidated_16bit_state_dict() if zero3 else None
        if self.rank == 0:
            staging = hf_dir.with_name(f".{hf_dir.name}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                if self.lora:  # the merged model, and the adapter beside it
                    full = state if state is not None else self.model.state_dict()
                    self.model.get_base_model().save_pretrained(staging, state_dict=merged_state_dict(full, self.lora))
                    self.model.save_pretrained(staging / ADAPTER_DIR, state_dict=full)
                else:
                    self.model.save_pretrained(staging, state_dict=state)
                self.processor.save_pretrained(staging)
                save_model_config(self.config, staging)
                if before_publish is not None:
                    before_publish()
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            shutil.rmtree(hf_dir, ignore_errors=True)
            staging.rename(hf_dir)
        if self.world_size > 1:
            torch.distributed.barrier()

    def load_state(self, ds_dir: Path, tag: str) -> None:
        """Restore weights and optimizer state saved by `save` (exact resume)."""
        self.engine.load_checkpoint(str(ds_dir), tag=tag)
