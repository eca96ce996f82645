"""End to end on the tiny model: rollouts, DeepSpeed GRPO on the CPU, resume, the run loop."""

import dataclasses
import json
import random

import pytest
import torch

from spark_vl.config import load_config, load_model_config
from spark_vl.models import load_processor
from spark_vl.layout import policy_dir
from spark_vl.pipeline import run, sample_groups, sample_until_informative, task_prompts
from spark_vl.workspace import Workspace
from spark_vl.records import PromptRecord, RolloutGroup
from spark_vl.models.inputs import conversation
from spark_vl.rollout.hf import HFRolloutEngine
from spark_vl.models.forward import completion_batch, completion_logps
from spark_vl.train.schedule import mini_batches
from spark_vl.train.sequences import sequences_with_signal
from spark_vl.train.trainer import PolicyTrainer

METRICS = ["eval/task_acc", "eval/task_acc_reflect", "eval/judge_pointwise_acc", "eval/judge_pairwise_acc",
           "eval/well_formed", "eval/judge_well_formed", "eval/judge_same_form_acc", "eval/judge_restated", "eval/judge_ece", "eval/judge_brier",
           "rollout/reward_mean", "rollout/all_correct_frac", "rollout/all_wrong_frac", "rollout/response_len",
           "verify/timeout_frac", "verify/judge_disagreement_rate", "recycle/n_pointwise", "recycle/n_pairwise", "recycle/n_reflect",
           "aux/judge_reward_mean", "aux/reflect_reward_mean", "train/loss", "train/kl", "train/entropy",
           "time/rollout_s", "time/verify_s", "time/recycle_s", "time/train_s", "time/evaluate_s",
           "throughput/rollout_tokens_per_s"]

SMALL = ["rollout.prompts_per_batch=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
         "train.iterations=2", "train.warmup.steps=3", "train.warmup.batch_size=8", "train.micro_batch_size=8",
         "eval.every=1", "eval.n_task=6", "eval.n_judge=4", "eval.reflect_rounds=1",
         "data.builtin.n_train=40", "data.builtin.n_eval=12"]


def _prompts(data_dir, n):
    rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()][:n]
    return [PromptRecord(id=r["id"], kind="solve", images=[str(data_dir / r["image"])], text=r["question"],
                         label=r["answer"], question=r["question"], answer=r["answer"], source_id=r["id"])
            for r in rows]


def _rewarded_groups(trainer, processor, cfg, data_dir):
    """4 prompts x 4 responses sampled from the trainer's policy, each group with differing rewards."""
    engine = HFRolloutEngine(trainer.model, processor, cfg.rollout, cfg.model, show_progress=False)
    groups = engine.generate(_prompts(data_dir, 4), n=4, seed=2)
    rng = random.Random(0)
    for g in groups:
        g.rewards = [1.0, 0.0] + [float(rng.random() < 0.5) for _ in range(2)]
    return groups


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_data_dir):
    cfg = load_config(None, SMALL)
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    return cfg, processor


def response_logps(model, groups: list[RolloutGroup], processor, model_cfg, temperature: float = 1.0,
                   suppress=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For every sampled response of `groups`: (its token log-probs under `model` by the training
    forward, the log-probs the rollout engine reported)."""
    flat = [(g, i) for g in groups for i in range(len(g.responses))]
    batch = completion_batch(processor, [conversation(g.prompt, model_cfg) for g, _ in flat],
                             [g.response_ids[i] for g, i in flat], torch.device("cpu"))
    with torch.no_grad():
        logps, _ = completion_logps(model, batch, temperature, suppress_ids=suppress)
    return [(logps[row, :len(g.logprobs[i])], torch.tensor(g.logprobs[i])) for row, (g, i) in enumerate(flat)]


def test_rollout_logprobs_match_the_training_forward(setup, tiny_model_dir, tiny_data_dir):
    cfg, processor = setup
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, None)
    engine = HFRolloutEngine(trainer.model, processor, cfg.rollout, cfg.model, show_progress=False)
    groups = engine.generate(_prompts(tiny_data_dir, 3), n=4, seed=1)
    assert [len(g.responses) for g in groups] == [4, 4, 4]
    for ours, sampled in response_logps(trainer.model, groups, processor, cfg.model, suppress=trainer.suppress):
        assert torch.allclose(ours, sampled, atol=1e-4)


def test_grpo_step_on_deepspeed_changes_weights_and_resumes_exactly(setup, tiny_model_dir, tiny_data_dir, tmp_path):
    cfg, processor = setup
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    groups = _rewarded_groups(trainer, processor, cfg, tiny_data_dir)
    groups[0].rewards = [1.0] * 4  # a flat group: counted, no gradient
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.grpo_step(groups)
    assert stats["train/flat_groups"] == 1 and stats["train/sequences"] == 12
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    trainer.save(tmp_path / "policy-1", tmp_path / "ds", "iter-1")
    trainer.grpo_step(groups)
    continued = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    resumed = PolicyTrainer(cfg, processor, tmp_path / "policy-1", tiny_model_dir)
    resumed.load_state(tmp_path / "ds", "iter-1")
    resumed.grpo_step(groups)
    for k, v in resumed.model.state_dict().items():
        assert torch.allclose(v, continued[k], atol=1e-6), k


def test_updates_per_batch_are_optimizer_steps_on_the_same_rollouts(setup, tiny_model_dir, tiny_data_dir):
    cfg, processor = setup
    engine = HFRolloutEngine(PolicyTrainer(cfg, processor, tiny_model_dir, None).model, processor, cfg.rollout,
                             cfg.model, show_progress=False)
    groups = engine.generate(_prompts(tiny_data_dir, 3), n=4, seed=4)
    for g in groups:
        g.rewards = [1.0, 0.0, 0.0, 1.0]
    twice = PolicyTrainer(load_config(None, SMALL + ["train.updates_per_batch=2"]), processor, tiny_model_dir,
                          tiny_model_dir)
    stats = twice.grpo_step(groups)
    once = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    first = once.grpo_step(groups)
    once.grpo_step(groups)
    assert twice.engine.global_steps == once.engine.global_steps == 2
    for k, v in twice.model.state_dict().items():
        assert torch.allclose(v, once.model.state_dict()[k], atol=1e-6), k
    assert stats["train/loss"] != pytest.approx(first["train/loss"], abs=1e-9)  # the average of both steps


def test_mini_batches_are_optimizer_steps_one_after_another(setup, tiny_model_dir, tiny_data_dir):
    cfg, processor = setup
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    groups = _rewarded_groups(trainer, processor, cfg, tiny_data_dir)[:3]
    split = PolicyTrainer(load_config(None, SMALL + ["train.ppo_mini_batch_size=1"]), processor, tiny_model_dir,
                          tiny_model_dir)
    stats = split.grpo_step(groups, seed=5)
    assert split.engine.global_steps == 3 and stats["train/optimizer_steps"] == 3.0
    order = [step[0].group for step in mini_batches(sequences_with_signal(groups, cfg)[0], 1, seed=5)]
    assert sorted(order) == [0, 1, 2]
    losses = [trainer.grpo_step([groups[i]])["train/loss"] for i in order]  # the same steps, by hand
    assert stats["train/loss"] == pytest.approx(sum(losses) / 3, abs=1e-6)
    for k, v in split.model.state_dict().items():
        assert torch.allclose(v, trainer.model.state_dict()[k], atol=1e-6), k


def test_a_grpo_step_steps_at_the_rate_it_is_given(setup, tiny_model_dir, tiny_data_dir):
    """train.lr_scheduler_type: the stage passes each iteration's rate; the step uses it (a zero rate
    leaves the weights where they were) and reports it."""
    cfg, processor = setup
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    groups = _rewarded_groups(trainer, processor, cfg, tiny_data_dir)[:2]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.grpo_step(groups, lr=0.0)["train/lr"] == 0.0
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.grpo_step(groups)["train/lr"] == 0.0  # the rate stays until the next one is given
    assert trainer.grpo_step(groups, lr=cfg.train.lr)["train/lr"] == cfg.train.lr
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_a_packed_grpo_step_is_the_padded_one(setup, tiny_model_dir, tiny_data_dir):
    """train.padding_free: short task prompts packed beside a long one; the rollout correction's
    scoring pass and the update give the padded step's loss and weights, with less padding."""
    cfg, processor = setup
    engine = HFRolloutEngine(PolicyTrainer(cfg, processor, tiny_model_dir, None).model, processor, cfg.rollout,
                             cfg.model, show_progress=False)
    short = _prompts(tiny_data_dir, 3)
    long = dataclasses.replace(short[0], id="long", text=" ".join([short[0].text] * 14))
    groups = engine.generate([*short, long], n=4, seed=7)
    for g in groups:
        g.rewards = [1.0, 0.0, 0.0, 1.0]
    steps = {}
    for packed in (False, True):
        config = load_config(None, SMALL + [f"train.padding_free={packed}", "train.tis_imp_ratio_cap=2"])
        trainer = PolicyTrainer(config, processor, tiny_model_dir, tiny_model_dir)
        steps[packed] = trainer.grpo_step(groups), trainer.model.state_dict()
    (padded, padded_weights), (packed, packed_weights) = steps[False], steps[True]
    assert packed["train/loss"] == pytest.approx(padded["train/loss"], abs=1e-5)
    assert packed["train/kl"] == pytest.approx(padded["train/kl"], abs=1e-6)
    assert packed["train/padding_frac"] < padded["train/padding_frac"]
    for k, v in packed_weights.items():
        assert torch.allclose(v, padded_weights[k], atol=1e-5), k


def test_each_prompt_kind_samples_its_own_group_size(setup, tiny_model_dir, tiny_data_dir):
    cfg, processor = setup
    sizes = load_config(None, SMALL + ['rollout.kind_group_size={"judge_pointwise": 3}']).rollout
    engine = HFRolloutEngine(PolicyTrainer(cfg, processor, tiny_model_dir, None).model, processor, sizes, cfg.model,
                             show_progress=False)
    solve_a, judge, solve_b = _prompts(tiny_data_dir, 3)
    judge = dataclasses.replace(judge, kind="judge_pointwise", label="Yes")
    groups = sample_groups(engine, [solve_a, judge, solve_b], sizes, seed=6)
    assert [(g.prompt.id, len(g.responses)) for g in groups] == [(solve_a.id, 4), (judge.id, 3), (solve_b.id, 4)]
    alone = engine.generate([solve_a, solve_b], 4, seed=6)  # the same draws as a batch of task prompts alone
    assert [g.response_ids for g in (groups[0], groups[2])] == [g.response_ids for g in alone]


def test_micro_batches_with_accumulation_match_one_big_batch(setup, tiny_model_dir, tiny_data_dir):
    cfg, processor = setup
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    engine = HFRolloutEngine(trainer.model, processor, cfg.rollout, cfg.model, show_progress=False)
    groups = engine.generate(_prompts(tiny_data_dir, 3), n=4, seed=3)
    for g in groups:
        g.rewards = [1.0, 0.0, 0.0, 1.0]
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    results = []
    for micro in (3, 12):
        cfg_micro = load_config(None, SMALL + [f"train.micro_batch_size={micro}"])
        trainer = PolicyTrainer(cfg_micro, processor, tiny_model_dir, tiny_model_dir)
        stats = trainer.grpo_step(groups)
        results.append(({k: v.clone() for k, v in trainer.model.state_dict().items()}, stats))
    (small, small_stats), (big, big_stats) = results
    assert small_stats["train/loss"] == pytest.approx(big_stats["train/loss"], abs=1e-6)
    # The same tokens; a micro-batch pads its rows only to its own longest prompt and completion.
    assert small_stats["train/tokens"] == big_stats["train/tokens"]
    assert 0 <= small_stats["train/padding_frac"] <= big_stats["train/padding_frac"] < 1
    assert big_stats["train/padding_frac"] > 0  # sampled completions differ in length
    # Adam's first step is about lr * sign(grad): compare the update directions as a whole.
    small_update = torch.cat([(small[k] - start[k]).flatten() for k in start])
    big_update = torch.cat([(big[k] - start[k]).flatten() for k in start])
    assert big_update.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(small_update, big_update, dim=0) > 0.99


def test_warmup_checks_its_probe_until_max_steps_when_the_margin_is_out_of_reach(setup, tiny_model_dir,
                                                                                   tiny_data_dir):
    from spark_vl.data import load_dataset
    from spark_vl.prompts import Templates
    from spark_vl.train.warmup import run_warmup
    from spark_vl.verify import GradingPool

    cfg = load_config(None, SMALL + ["train.warmup.above_chance=1.0", "train.warmup.check_every=2",
                                     "train.warmup.max_steps=7", "train.warmup.probe_size=10"])
    samples = load_dataset(tiny_data_dir / "train.jsonl").samples
    trainer = PolicyTrainer(cfg, setup[1], tiny_model_dir, None, lr=cfg.train.warmup.lr, adapters=False)
    with GradingPool() as pool:
        losses, checks = run_warmup(trainer, samples, cfg, Templates.load(), pool)
        assert len(losses) == 7 and [(c["step"], c["passed"]) for c in checks] == [(3, False), (5, False), (7, False)]
        assert all(set(c["accuracy"]) == {s.question for s in samples[-10:]} for c in checks)
        with pytest.raises(ValueError, match="probe_size"):
            run_warmup(trainer, samples[:10], cfg, Templates.load(), pool)


def test_warmup_goes_on_judging_until_the_verdict_follows_the_replys_words(setup, tiny_model_dir, tiny_data_dir,
                                                                            monkeypatch):
    from spark_vl.data import load_dataset
    from spark_vl.prompts import Templates, wrong_answers
    from spark_vl.train import warmup
    from spark_vl.verify import GradingPool

    monkeypatch.setattr(warmup, "beats_chance", lambda *_: True)  # the task is seen at once: the judging begins
    samples = load_dataset(tiny_data_dir / "train.jsonl").samples
    probe = [s.question for s in samples[-10:] if len(wrong_answers(samples)[s.question]) > 1]
    keys = {f"{kind}: {question}" for kind in ("judge_pointwise", "judge_pairwise") for question in probe}
    with GradingPool() as pool:
        for follows, steps in ((1.0, 7), (0.0, 3)):
            cfg = load_config(None, SMALL + ["train.warmup.above_chance=0.15", "train.warmup.check_every=2",
                                             "train.warmup.max_steps=7", "train.warmup.probe_size=10",
                                             f"train.warmup.verdict_follows={follows}"])
            trainer = PolicyTrainer(cfg, setup[1], tiny_model_dir, None, lr=cfg.train.warmup.lr, adapters=False)
            losses, checks = warmup.run_warmup(trainer, samples, cfg, Templates.load(), pool)
            assert len(losses) == steps and all(set(c["verdict"]) == keys for c in checks)
            assert [c["passed"] for c in checks] == [False] * (len(checks) - 1) + [follows == 0.0]
            assert all(0 <= rate <= 1 for c in checks for rate in c["verdict"].values())


def test_two_iterations_end_to_end_and_rerun_skips(tmp_path, tiny_data_dir):
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}"])
    run_dir = tmp_path / "run"
    rows = run(cfg, run_dir)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for name in METRICS:
        assert name in rows[2], name
    assert (run_dir / "iter-0002" / "verifier_disagreements.jsonl").exists()  # the audit of each evaluation
    own = [json.loads(line) for line in (run_dir / "iter-0002" / "eval_samples.jsonl").read_text().splitlines()]
    assert all({"verifier_reward", "p_positive", "policy_reply"} <= set(r) for r in own if r["kind"] == "judge_own")
    for k in (0, 1, 2):
        assert (policy_dir(run_dir, k) / "config.json").exists()
        assert load_model_config(policy_dir(run_dir, k)) == cfg  # a policy knows what it was trained with
    assert (run_dir / "deepspeed" / "iter-0002").is_dir() and not (run_dir / "deepspeed" / "iter-0001").exists()
    verified = [json.loads(line) for line in (run_dir / "iter-0001" / "verified.jsonl").read_text().splitlines()]
    assert len(verified) == 4 and all(len(g["rewards"]) == 4 for g in verified)
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = run(cfg, run_dir)
    assert [r["iteration"] for r in again] == [0, 1, 2]
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t and p.name not in ("metrics.jsonl", "config.yaml")]
    assert changed == []
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1, 2]
    Workspace(cfg, run_dir).close()


@pytest.mark.parametrize("options", [["train.entropy_coef=0.01"], ["train.clip_eps_high=0.28"],
                                     ["train.loss_agg_mode=seq-mean-token-mean"],
                                     ["train.loss_agg_mode=seq-mean-token-sum-norm"],
                                     ["train.adv_estimator=rloo", "train.kl_loss_type=k2"],
                                     ["train.adv_estimator=reinforce_plus_plus", "train.kl_loss_type=k1"],
                                     ["train.loss_mode=gspo", "train.loss_agg_mode=seq-mean-token-mean",
                                      "train.clip_eps=3e-4", "train.clip_eps_high=4e-4"],
                                     ["train.tis_imp_ratio_cap=2", "train.ppo_mini_batch_size=1"]])
def test_grpo_options_train_on_deepspeed(setup, tiny_model_dir, tiny_data_dir, options):
    cfg, processor = setup
    trainer = PolicyTrainer(load_config(None, SMALL + options), processor, tiny_model_dir, tiny_model_dir)
    engine = HFRolloutEngine(trainer.model, processor, cfg.rollout, cfg.model, show_progress=False)
    groups = engine.generate(_prompts(tiny_data_dir, 2), n=4, seed=5)
    for g in groups:
        g.rewards = [1.0, 0.0, 0.0, 1.0]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.grpo_step(groups)
    assert torch.isfinite(torch.tensor(stats["train/loss"])) and stats["train/entropy"] > 0
    if "train.tis_imp_ratio_cap=2" in options:  # the engine is the trainer's own model: weights near 1
        assert stats["train/tis_weight"] == pytest.approx(1.0, abs=0.02)
        assert stats["train/optimizer_steps"] == 2
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_token_budget_micro_batches_make_the_same_update_as_row_micro_batches(setup, tiny_model_dir, tiny_data_dir):
    """Micro-batches filled by padded tokens (train.max_tokens_per_micro_batch) split the step
    differently, here into more and smaller ones, but gradients accumulate to the same update."""
    from spark_vl.train.schedule import token_budget_chunks

    assert token_budget_chunks([(10, 5), (10, 5), (30, 2), (10, 5), (100, 100)], 60) == [[0, 1], [2], [3], [4]]
    assert token_budget_chunks([], 60) == []
    cfg, processor = setup
    rows = load_config(None, SMALL + ["train.micro_batch_size=32"])
    by_rows = PolicyTrainer(rows, processor, tiny_model_dir, tiny_model_dir)
    groups = _rewarded_groups(by_rows, processor, cfg, tiny_data_dir)
    budget = load_config(None, SMALL + ["train.max_tokens_per_micro_batch=400"])
    by_tokens = PolicyTrainer(budget, processor, tiny_model_dir, tiny_model_dir)
    by_tokens._prompt_lengths = {}
    sequences = sequences_with_signal(groups, budget, processor.tokenizer)[0]
    chunks = by_tokens._chunks(sequences)
    assert len(chunks) > 1 and sorted(len(c) for c in chunks) != [len(sequences)]
    widths = [len(c) * (max(by_tokens._prompt_tokens(s.conversation) for s in c) + max(len(s.completion) for s in c))
              for c in chunks]
    assert max(widths) <= 400
    stats_rows, stats_tokens = by_rows.grpo_step(groups), by_tokens.grpo_step(groups)
    assert stats_tokens["train/loss"] == pytest.approx(stats_rows["train/loss"], abs=1e-7)
    # The first Adam step's first moment is (1 - beta1) x the gradient: compare gradients, not
    # the weights (Adam's first step moves every weight by about lr, whatever its gradient's size).
    first_moments = [[state["exp_avg"] for state in trainer.engine.optimizer.state.values()]
                     for trainer in (by_rows, by_tokens)]
    assert len(first_moments[0]) == len(first_moments[1]) > 0
    scale = max(float(m.abs().max()) for m in first_moments[0])
    for a, b in zip(*first_moments):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


class ScriptedEngine:
    """A rollout engine whose answers are fixed by the sample: right on half the responses for
    samples with an even number (a group whose rewards differ), wrong on all others."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n, greedy=False, seed=0):
        self.calls.append(([p.source_id for p in prompts], seed))
        groups = []
        for p in prompts:
            mixed = int(p.source_id.split("-")[-1]) % 2 == 0
            responses = [f"\\boxed{{{p.label}}}" if mixed and i % 2 else "\\boxed{nothing}" for i in range(n)]
            groups.append(RolloutGroup(p, responses, [[1]] * n, [[0.0]] * n))
        return groups


@pytest.mark.parametrize("max_batches", [1, 2, 3, 10])
def test_dynamic_sampling_draws_new_samples_until_the_batch_has_signal(tiny_data_dir, max_batches):
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     "rollout.filter_groups.enable=true",
                                     f"rollout.filter_groups.max_num_gen_batches={max_batches}"])
    ws = Workspace(cfg, tiny_data_dir / "unused-run-dir")
    try:
        engine = ScriptedEngine()
        first = engine.generate(task_prompts(ws, 3), 4)
        extra, draws = sample_until_informative(ws, 3, engine, first)
        other = ScriptedEngine()
        again, draws_again = sample_until_informative(ws, 3, other, other.generate(task_prompts(ws, 3), 4))
    finally:
        ws.close()
    solve = first + extra
    informative = [len(set(g.rewards)) > 1 for g in solve if g.rewards]
    ids = [g.prompt.source_id for g in solve]
    assert len(set(ids)) == len(ids), "a training sample was drawn twice"
    assert draws == len(engine.calls) == 1 + len(extra) // 4
    assert draws <= max_batches
    # It stops as soon as 4 groups differ, or at the cap; never earlier.
    before_last = sum(len(set(g.rewards)) > 1 for g in solve[:-4])
    if draws < max_batches:
        assert sum(informative) >= 4 and (draws == 1 or before_last < 4)
    if max_batches == 10:
        assert draws < max_batches, "half the samples give differing rewards: 10 batches are never needed"
    assert [g.prompt.source_id for g in again] == [g.prompt.source_id for g in extra] and draws_again == draws
    assert len({seed for _, seed in engine.calls}) == len(engine.calls)


def test_dynamic_sampling_in_a_run(tmp_path, tiny_data_dir):
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", "train.iterations=1",
                                     "rollout.filter_groups.enable=true",
                                     "rollout.filter_groups.max_num_gen_batches=2"])
    rows = run(cfg, tmp_path / "run")
    groups = [json.loads(line) for line in (tmp_path / "run" / "iter-0001" / "verified.jsonl").read_text().splitlines()]
    solve = [g for g in groups if g["prompt"]["kind"] == "solve"]
    differing = sum(len(set(g["rewards"])) > 1 for g in solve[:4])
    assert rows[1]["rollout/gen_batches"] == (1 if differing >= 4 else 2)
    assert len(solve) == 4 * rows[1]["rollout/gen_batches"]
    assert len({g["prompt"]["source_id"] for g in solve}) == len(solve)


def test_temperature_per_kind_is_what_training_scores_with(setup, tiny_model_dir, tiny_data_dir):
    cfg = load_config(None, SMALL + ["rollout.kind_temperature={judge_pointwise: 2.5}"])
    processor = setup[1]
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, None)
    engine = HFRolloutEngine(trainer.model, processor, cfg.rollout, cfg.model, show_progress=False)
    prompts = _prompts(tiny_data_dir, 4)
    for p in prompts[1::2]:
        p.kind = "judge_pointwise"
    groups = engine.generate(prompts, n=3, seed=2)
    assert [g.prompt.id for g in groups] == [p.id for p in prompts]
    for g in groups:
        g.rewards = [1.0, 0.0, 0.0]
    sequences, _ = sequences_with_signal(groups, cfg)
    assert [s.temperature for s in sequences] == [1.0] * 3 + [2.5] * 3 + [1.0] * 3 + [2.5] * 3
    batch = completion_batch(processor, [s.conversation for s in sequences], [s.completion for s in sequences],
                             torch.device("cpu"))
    with torch.no_grad():
        scored, _ = completion_logps(trainer.model, batch, torch.tensor([s.temperature for s in sequences]),
                                     suppress_ids=trainer.suppress)
        at_one, _ = completion_logps(trainer.model, batch, suppress_ids=trainer.suppress)
    for row, s in enumerate(sequences):
        expected = torch.tensor(s.old_logps)
        assert torch.allclose(scored[row, :len(expected)], expected, atol=1e-4)
        if s.temperature != 1.0:
            assert not torch.allclose(at_one[row, :len(expected)], expected, atol=1e-2)


def test_a_users_reward_function_pays_the_run_and_its_evaluation(tmp_path, tiny_data_dir):
    (tmp_path / "always.py").write_text("def one(response, answer, prompt):\n    return 1.0\n")
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", "train.iterations=1",
                                     f"reward.function={tmp_path / 'always.py'}:one"])
    rows = run(cfg, tmp_path / "run")
    assert rows[1]["rollout/reward_mean"] == 1.0 and rows[1]["eval/task_acc"] == 1.0
    assert rows[0]["eval/task_acc"] == 1.0  # a random model's answers: only the user's reward pays them


def test_two_image_prompts_go_through_every_stage(tmp_path):
    """The built-in `compare` family (two images per question) rendered into the run, rolled
    out, graded, recycled (the recycled prompts keep both images), trained on and evaluated (its
    held-out records name both images, relative to the run folder)."""
    (tmp_path / "parity.py").write_text("def parity(response, answer, prompt):\n"
                                        "    return float(len(response) % 2)\n")  # groups with signal
    cfg = load_config(None, SMALL + ["data.builtin.families=[compare]", "train.iterations=1",
                                     f"reward.function={tmp_path / 'parity.py'}:parity"])
    run_dir = tmp_path / "run"
    rows = run(cfg, run_dir)
    assert rows[1]["train/sequences"] > 0
    rollouts = [json.loads(line) for line in (run_dir / "iter-0001" / "rollouts.jsonl").read_text().splitlines()]
    assert rollouts and all(len(group["prompt"]["images"]) == 2 for group in rollouts)
    recycled = [json.loads(line) for line in (run_dir / "iter-0001" / "recycled.jsonl").read_text().splitlines()]
    assert recycled and all(len(p["images"]) == 2 for p in recycled)
    evaluated = [json.loads(line) for line in (run_dir / "iter-0001" / "eval_samples.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in evaluated} >= {"solve", "judge_pointwise", "judge_pairwise"}
    for record in evaluated:
        assert len(record["images"]) == 2 and all((run_dir / image).is_file() for image in record["images"])


def test_video_prompts_go_through_every_stage(tmp_path):
    """The built-in `motion` family (a clip as a folder of frames) beside `compare` (two images):
    rendered into the run, rolled out, graded, recycled (recycled prompts keep their video),
    trained on and evaluated (held-out records name the clip, relative to the run folder)."""
    (tmp_path / "parity.py").write_text("def parity(response, answer, prompt):\n"
                                        "    return float(len(response) % 2)\n")  # groups with signal
    cfg = load_config(None, SMALL + ["data.builtin.families=[motion,compare]", "train.iterations=1",
                                     "data.builtin.n_eval=40",  # judge prompts need a question with two answers
                                     f"reward.function={tmp_path / 'parity.py'}:parity"])
    run_dir = tmp_path / "run"
    rows = run(cfg, run_dir)
    assert rows[1]["train/sequences"] > 0
    rollouts = [json.loads(line) for line in (run_dir / "iter-0001" / "rollouts.jsonl").read_text().splitlines()]
    assert any(group["prompt"]["video"] for group in rollouts)
    recycled = [json.loads(line) for line in (run_dir / "iter-0001" / "recycled.jsonl").read_text().splitlines()]
    assert any(p["video"] for p in recycled)
    evaluated = [json.loads(line) for line in (run_dir / "iter-0001" / "eval_samples.jsonl").read_text().splitlines()]
    videos = [r["video"] for r in evaluated if "video" in r]
    assert {r["kind"] for r in evaluated if "video" in r} >= {"solve", "judge_pointwise"}
    assert any(len(r["images"]) == 2 for r in evaluated)
    assert videos and all(not video.startswith("/") and len(list((run_dir / video).glob("*.png"))) == 4
                          for video in videos)


def test_mp4_rows_of_a_users_dataset_go_through_every_stage(tmp_path):
    """A user's dataset whose clips are mp4 files (H.264, written with PyAV; the training rows
    start their clip at 0.5 s, the held-out split mixes them with frame folders): loaded, rolled
    out, recycled with their video and its bounds, trained on, evaluated."""
    from PIL import Image

    from spark_vl.config import BuiltinDataConfig
    from spark_vl.data.tasks import make_dataset
    from tests.test_loaders import write_mp4

    data = tmp_path / "data"
    make_dataset(data, BuiltinDataConfig(n_train=24, n_eval=24, families=["motion"]))
    for split in ("train", "eval"):
        rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
        for row in rows if split == "train" else rows[::2]:
            folder = data / row["video"]
            write_mp4(folder.with_suffix(".mp4"), [Image.open(f) for f in sorted(folder.glob("*.png"))], fps=2)
            row["video"] += ".mp4"
            if split == "train":
                row["video_start"] = 0.5  # a row's own clip bound, kept by every prompt made from it
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "parity.py").write_text("def parity(response, answer, prompt):\n"
                                        "    return float(len(response) % 2)\n")
    cfg = load_config(None, SMALL + [f"data.train_path={data / 'train.jsonl'}", f"data.eval_path={data / 'eval.jsonl'}",
                                     "train.iterations=1", f"reward.function={tmp_path / 'parity.py'}:parity"])
    run_dir = tmp_path / "run"
    assert run(cfg, run_dir)[1]["train/sequences"] > 0
    rollouts = [json.loads(line) for line in (run_dir / "iter-0001" / "rollouts.jsonl").read_text().splitlines()]
    assert rollouts and all(group["prompt"]["video"].endswith(".mp4") for group in rollouts)
    recycled = [json.loads(line) for line in (run_dir / "iter-0001" / "recycled.jsonl").read_text().splitlines()]
    assert recycled and all(p["video"].endswith(".mp4") and p["video_options"] == {"video_start": 0.5}
                            for p in recycled)
    evaluated = [json.loads(line) for line in (run_dir / "iter-0001" / "eval_samples.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in evaluated if r["video"].endswith(".mp4")} >= {"solve", "judge_pointwise"}
    assert any(not r["video"].endswith(".mp4") for r in evaluated)


def test_a_video_costs_at_most_four_images_and_a_file_reads_as_its_frames(setup, tiny_model_dir, tmp_path):
    """The default frame budget keeps a clip's prompt within 4x an image prompt's vision tokens;
    an mp4 of the same frames gives the same grid and close pixels (H.264 is lossy); the training
    forward scores a video prompt's completion as generation sampled it."""
    from PIL import Image

    from spark_vl.models.inputs import encode_prompts
    from tests.test_loaders import write_mp4

    cfg, processor = setup
    frames = [Image.new("RGB", (112, 112), (255, 255, 255)) for _ in range(6)]
    (tmp_path / "clip").mkdir()
    for i, frame in enumerate(frames):
        frame.paste((200, 30, 30), (10 + 15 * i, 40, 30 + 15 * i, 60))
        frame.save(tmp_path / "clip" / f"{i:02d}.png")
    write_mp4(tmp_path / "clip.mp4", frames, fps=2)
    base = dict(kind="solve", text="Which way?", label="right", question="Which way?", answer="right", source_id="s")
    image = PromptRecord(id="i", images=[str(tmp_path / "clip" / "00.png")], **base)
    folder = PromptRecord(id="f", images=[], video=str(tmp_path / "clip"), **base)
    file = PromptRecord(id="m", images=[], video=str(tmp_path / "clip.mp4"), **base)
    pad = {name: processor.tokenizer.convert_tokens_to_ids(name) for name in ("<|image_pad|>", "<|video_pad|>")}
    counts = [int(sum((encode_prompts(processor, [conversation(p, cfg.model)])["input_ids"] == i).sum()
                      for i in pad.values())) for p in (image, folder, file)]
    assert counts[0] < counts[1] <= 4 * counts[0] and counts[1] == counts[2]
    from_folder, from_file = (encode_prompts(processor, [conversation(p, cfg.model)]) for p in (folder, file))
    assert torch.equal(from_folder["video_grid_thw"], from_file["video_grid_thw"])
    assert (from_folder["pixel_values_videos"] - from_file["pixel_values_videos"]).abs().mean() < 0.1

    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, None)
    engine = HFRolloutEngine(trainer.model, processor, cfg.rollout, cfg.model, show_progress=False)
    groups = engine.generate([folder, file], n=2, seed=0)
    for trained, sampled in response_logps(trainer.model, groups, processor, cfg.model, suppress=trainer.suppress):
        assert torch.allclose(trained, sampled, atol=1e-4)
