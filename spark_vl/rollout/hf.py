"""Rollouts with transformers `generate` (CPU and GPU)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from spark_vl.config import ModelConfig, RolloutConfig
from spark_vl.models import load_model, vision_token_ids
from spark_vl.records import PromptRecord, RolloutGroup
from spark_vl.models.inputs import conversation, encode_prompts
from spark_vl.models.forward import completion_batch, completion_logps, policy_logits


class HFRolloutEngine:
    """Samples `n` responses per prompt with `generate`, keeping the sampling policy's log-probs.

    Log-probs are those of the temperature-scaled distribution without vision tokens (top-p is
    not renormalised), which is what the training forward recomputes.
    """

    def __init__(self, model, processor, rollout_cfg: RolloutConfig, model_cfg: ModelConfig,
                 sequences_per_call: int = 128, show_progress: bool = True):
        self.model = model
        self.processor = processor
        self.cfg = rollout_cfg
        self.model_cfg = model_cfg
        self.sequences_per_call = sequences_per_call
        self.show_progress = show_progress
        tokenizer = processor.tokenizer
        self.suppress = vision_token_ids(tokenizer)
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.pad_id = tokenizer.pad_token_id

    @classmethod
    def open(cls, engines, policy: Path, model=None) -> "HFRolloutEngine":
        """Sampling in this process from `model`, or from the checkpoint at `policy` loaded here."""
        config = engines.config
        model = model if model is not None else load_model(policy, config.model.dtype)
        return cls(model, engines.processor, config.rollout, config.model, show_progress=engines.show_progress)

    @torch.no_grad()
    def generate(self, prompts: list[PromptRecord], n: int, greedy: bool = False, seed: int = 0) -> list[RolloutGroup]:
        n = 1 if greedy else n
        per_call = max(1, self.sequences_per_call // n)
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        # One `generate` call samples at one temperature: prompts are batched by their kind's.
        by_temperature: dict[float, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_temperature.setdefault(1.0 if greedy else self.cfg.temperature_for(prompt.kind), []).append(i)
        chunks = [(t, order[start:start + per_call]) for t, order in by_temperature.items()
                  for start in range(0, len(order), per_call)]
        done: dict[int, RolloutGroup] = {}
        for temperature, chunk in tqdm(chunks, desc="rollout", unit="batch", leave=False, disable=not self.show_progress):
            done.update(zip(chunk, self._generate_chunk([prompts[i] for i in chunk], n, greedy, temperature)))
        self.model.train(was_training)
        return [done[i] for i in range(len(prompts))]

    @torch.no_grad()
    def score(self, prompts: list[PromptRecord], completions: list[str], batch_size: int = 32) -> list[float]:
        """The log-probability of each completion (text after the prompt, end of turn not included)
        under the model at temperature 1, vision tokens excluded as in sampling."""
        tokenizer = self.processor.tokenizer
        ids = [tokenizer.encode(c, add_special_tokens=False) for c in completions]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        totals = []
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            batch = completion_batch(self.processor, [conversation(prompts[i], self.model_cfg) for i in chunk],
                                     [ids[i] for i in chunk], device)
            logps, _ = completion_logps(self.model, batch, suppress_ids=self.suppress)
            totals += (logps * batch["completion_mask"]).sum(-1).tolist()
        self.model.train(was_training)
        return totals

    def _generate_chunk(self, prompts: list[PromptRecord], n: int, greedy: bool,
                        temperature: float) -> list[RolloutGroup]:
        device = next(self.model.parameters()).device
        inputs = encode_prompts(self.processor, [conversation(p, self.model_cfg) for p in prompts]).to(device)
        sampling = {} if greedy else {"temperature": temperature, "top_p": self.cfg.top_p, "top_k": 0}
        out = self.model.generate(
            **inputs, do_sample=not greedy, num_return_sequences=n, max_new_tokens=self.cfg.max_new_tokens,
            suppress_tokens=self.suppress, output_logits=True, return_dict_in_generate=True,
            pad_token_id=self.pad_id, **sampling,
        )
        completion = out.sequences[:, inputs["input_ids"].shape[1]:]
        logits = policy_logits(torch.stack(out.logits, dim=1), temperature, self.suppress)
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        groups = []
        for i, prompt in enumerate(prompts):
            ids, logps, texts = [], [], []
            for j in range(i * n, (i + 1) * n):
                seq = completion[j].tolist()
                length = next((t + 1 for t, tok in enumerate(seq) if tok in self.eos_ids), len(seq))
                ids.append(seq[:length])
                logps.append([round(x, 6) for x in token_logps[j, :length].tolist()])
                texts.append(self.processor.tokenizer.decode(seq[:length], skip_special_tokens=True))
            groups.append(RolloutGroup(prompt, texts, ids, logps))
        return groups
