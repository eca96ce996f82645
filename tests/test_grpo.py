import math

import pytest
import torch

from spark_vl.train.grpo import (LossOptions, compute_advantages, group_advantages, grpo_loss, kl_penalty, label_balanced,
                                 loss_normaliser)


def test_group_advantages_normalise_and_flat_groups_carry_nothing():
    adv = group_advantages([1, 0, 0, 1])
    assert adv == pytest.approx([1, -1, -1, 1], abs=1e-5)
    assert sum(group_advantages([1, 0, 0, 0])) == pytest.approx(0, abs=1e-9)
    assert group_advantages([1, 1, 1]) == [0.0, 0.0, 0.0]
    assert group_advantages([0, 0]) == [0.0, 0.0]
    # Dr. GRPO (norm_adv_by_std false): r - mean, by hand.
    assert group_advantages([1, 0, 0, 0], by_std=False) == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert group_advantages([1, 1], by_std=False) == [0.0, 0.0]


def test_label_balanced_advantages_give_each_label_of_a_kind_equal_weight():
    yes = [1.0, -1.0, 1.0, -1.0]  # weight 4
    no_a, no_b = [0.5, -0.5], [3.0, -3.0]  # weight 1 + 6 = 7
    pair_a, solve = [2.0, -2.0], [1.5, -1.5]
    out = label_balanced([yes, no_a, no_b, pair_a, solve],
                         [("judge_pointwise", "Yes"), ("judge_pointwise", "No"), ("judge_pointwise", "No"),
                          ("judge_pairwise", "A"), None])
    # Mean weight of the two pointwise labels is 5.5: Yes scaled by 5.5/4, No by 5.5/7.
    assert out[0] == pytest.approx([1.375, -1.375, 1.375, -1.375])
    assert out[1] == pytest.approx([0.5 * 5.5 / 7, -0.5 * 5.5 / 7])
    assert out[2] == pytest.approx([3 * 5.5 / 7, -3 * 5.5 / 7])
    assert sum(abs(a) for a in out[0]) == pytest.approx(sum(abs(a) for g in out[1:3] for a in g))
    assert out[3] == pair_a and out[4] == solve  # pairwise has one label here; solve is not a judge group
    # A label without signal leaves its kind unscaled (nothing can balance a push against nothing).
    assert label_balanced([yes, [0.0, 0.0]], [("judge_pointwise", "Yes"), ("judge_pointwise", "No")]) == [
        yes, [0.0, 0.0]]


def _inputs():
    torch.manual_seed(0)
    logps = torch.randn(3, 5) - 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return logps, mask


def test_on_policy_loss_is_minus_token_mean_advantage_and_kl_zero():
    logps, mask = _inputs()
    adv = torch.tensor([1.0, -0.5, 2.0])
    loss, stats = grpo_loss(logps, logps, logps, adv, mask, int(mask.sum()), LossOptions(kl_coef=1e-3))
    expected = -(adv.unsqueeze(1) * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats["kl_sum"] == pytest.approx(0.0, abs=1e-7)
    assert stats["tokens"] == 9


def test_clipping_stops_the_gradient_beyond_the_trust_region():
    logps, mask = _inputs()
    old = logps.clone()
    new = (logps + 0.5).requires_grad_()  # ratio e^0.5 = 1.65 > 1.2
    loss, stats = grpo_loss(new, old, old, torch.tensor([1.0, 1.0, 1.0]), mask, int(mask.sum()), LossOptions())
    loss.backward()
    assert torch.all(new.grad == 0)
    assert stats["clipped_sum"] == 9
    new2 = (logps + 0.5).requires_grad_()  # negative advantage: the unclipped term is the minimum
    loss, _ = grpo_loss(new2, old, old, torch.tensor([-1.0, -1.0, -1.0]), mask, int(mask.sum()), LossOptions())
    loss.backward()
    assert torch.all(new2.grad[mask.bool()] > 0)


def test_k3_kl_is_positive_and_pulls_towards_reference():
    logps, mask = _inputs()
    new = (logps + 0.3).requires_grad_()
    loss, stats = grpo_loss(new, new.detach(), logps, torch.zeros(3), mask, int(mask.sum()), LossOptions(kl_coef=1.0))
    assert stats["kl_sum"] > 0
    loss.backward()
    assert torch.all(new.grad[mask.bool()] > 0)  # descending lowers logps back towards the reference
    assert torch.all(new.grad[~mask.bool()] == 0)


def test_micro_batches_accumulate_to_the_full_batch_loss():
    logps, mask = _inputs()
    adv = torch.tensor([1.0, -0.5, 2.0])
    ref = logps - 0.1
    full, _ = grpo_loss(logps, logps, ref, adv, mask, int(mask.sum()), LossOptions(kl_coef=0.1))
    parts = [grpo_loss(logps[i:i + 1], logps[i:i + 1], ref[i:i + 1], adv[i:i + 1], mask[i:i + 1], int(mask.sum()),
                       LossOptions(kl_coef=0.1))[0] for i in range(3)]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), rel=1e-6)


def test_clip_higher_lets_a_positive_advantage_grow_past_clip_eps():
    logps, mask = _inputs()
    old = logps.clone()
    adv = torch.ones(3)
    symmetric = (logps + 0.25).requires_grad_()  # ratio e^0.25 = 1.284: above 1.2, below 1.3
    loss, stats = grpo_loss(symmetric, old, old, adv, mask, int(mask.sum()), LossOptions())
    loss.backward()
    assert stats["clipped_sum"] == 9 and torch.all(symmetric.grad == 0)
    higher = (logps + 0.25).requires_grad_()
    loss, stats = grpo_loss(higher, old, old, adv, mask, int(mask.sum()), LossOptions(clip_eps_high=0.3))
    loss.backward()
    assert stats["clipped_sum"] == 0
    assert higher.grad[mask.bool()] == pytest.approx(torch.full((9,), -torch.exp(torch.tensor(0.25)).item() / 9))


def test_entropy_bonus_is_minus_coef_times_token_mean_entropy():
    logps, mask = _inputs()
    entropy = torch.rand(3, 5)
    loss, _ = grpo_loss(logps, logps, logps, torch.zeros(3), mask, int(mask.sum()), LossOptions(entropy_coef=0.01),
                        per_token_entropy=entropy)
    assert loss.item() == pytest.approx(-0.01 * (entropy * mask).sum().item() / 9, rel=1e-6)


def test_loss_aggregation_modes_by_hand():
    logps, mask = _inputs()  # completion lengths 3, 5 and 1
    adv = torch.tensor([1.0, -0.5, 2.0])
    assert loss_normaliser("token-mean", 9, 3, 5) == 9
    assert loss_normaliser("seq-mean-token-mean", 9, 3, 5) == 3
    assert loss_normaliser("seq-mean-token-sum-norm", 9, 3, 5) == 15
    # On policy each token's loss is -advantage: every sequence's mean is -advantage, weighed alike.
    seq_mean, _ = grpo_loss(logps, logps, logps, adv, mask, 3, LossOptions(loss_agg_mode="seq-mean-token-mean"))
    assert seq_mean.item() == pytest.approx(-(1.0 - 0.5 + 2.0) / 3, rel=1e-6)
    # Dr. GRPO: token sums (1*3 - 0.5*5 + 2*1) over 3 sequences x 5 new tokens.
    dr_grpo, _ = grpo_loss(logps, logps, logps, adv, mask, 15, LossOptions(loss_agg_mode="seq-mean-token-sum-norm"))
    assert dr_grpo.item() == pytest.approx(-(3 - 2.5 + 2) / 15, rel=1e-6)
    # Micro-batches still add up to the whole batch in every mode.
    parts = [grpo_loss(logps[i:i + 1], logps[i:i + 1], logps[i:i + 1], adv[i:i + 1], mask[i:i + 1], 3,
                       LossOptions(loss_agg_mode="seq-mean-token-mean"))[0].item() for i in range(3)]
    assert sum(parts) == pytest.approx(seq_mean.item(), rel=1e-6)



def test_rloo_takes_the_mean_of_the_other_rewards_as_baseline():
    rewards = [[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.5], [1.0, 1.0], [0.7]]
    got = compute_advantages(rewards, [[1] * len(g) for g in rewards], "rloo")
    assert got[0] == pytest.approx([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3])  # r_i - mean of the others
    assert got[1] == pytest.approx([1 - 0.25, 0 - 0.75, 0.5 - 0.5])
    assert got[2] == [0.0, 0.0] and got[3] == [0.0]  # equal rewards, a group of one: no signal
    g = len(rewards[1])  # = G / (G - 1) * (r - mean)
    assert got[1] == pytest.approx([g / (g - 1) * (r - 0.5) for r in rewards[1]])


def test_reinforce_plus_plus_whitens_over_the_batchs_tokens_without_a_group_baseline():
    rewards, lengths = [[1.0, 1.0], [0.0, 1.0]], [[2, 2], [4, 1]]
    got = compute_advantages(rewards, lengths, "reinforce_plus_plus")
    tokens = [1.0] * 4 + [0.0] * 4 + [1.0]  # every token carries its response's reward
    mean = sum(tokens) / 9
    std = math.sqrt(sum((t - mean) ** 2 for t in tokens) / 8)
    assert got == [pytest.approx([(1 - mean) / std] * 2, rel=1e-6), pytest.approx([-mean / std, (1 - mean) / std],
                                                                                    rel=1e-6)]
    assert got[0][0] > 0  # a group of equal rewards still carries signal: better than the batch
    assert compute_advantages([[1.0], [1.0, 1.0]], [[3], [1, 2]], "reinforce_plus_plus") == [[0.0], [0.0, 0.0]]
    assert compute_advantages([[1.0, 0.0]], [[1, 1]], "grpo") == [group_advantages([1.0, 0.0])]


def test_kl_estimators_against_their_definitions():
    """On a categorical pi and ref: k1 and k3 are unbiased (their expectation under pi is
    KL(pi || ref) exactly), k2 is not but is >= 0; k3 >= 0 on every token."""
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    kl = float((pi * (pi / ref).log()).sum())
    per_token = {kind: kl_penalty(pi.log(), ref.log(), kind) for kind in ("k1", "k2", "k3")}
    assert float((pi * per_token["k1"]).sum()) == pytest.approx(kl, rel=1e-12)
    assert float((pi * per_token["k3"]).sum()) == pytest.approx(kl, rel=1e-12)
    assert per_token["k1"][2] < 0 <= per_token["k3"].min() and per_token["k2"].min() >= 0
    assert per_token["k2"][0] == pytest.approx(0.5 * math.log(2) ** 2)
    assert per_token["k3"][0] == pytest.approx(0.5 - math.log(0.5) - 1)  # ref/pi - log(ref/pi) - 1
    assert torch.equal(kl_penalty(pi.log(), pi.log(), "k2"), torch.zeros(3, dtype=torch.float64))


def test_gspo_clips_one_ratio_per_sequence_and_has_the_sequence_level_gradient():
    """With seq-mean-token-mean, the token-level GSPO loss equals -(1/B) sum_i min(s_i A_i,
    clip(s_i) A_i), s_i = exp(mean_t log(pi / pi_old)), in value and in gradient."""
    logps, mask = _inputs()  # completion lengths 3, 5 and 1
    old = logps.detach().clone()
    shift = torch.tensor([[0.05, -0.02, 0.01, 0, 0], [0.4, 0.3, 0.5, 0.2, 0.6], [-0.01, 0, 0, 0, 0]],
                         dtype=logps.dtype)
    adv = torch.tensor([1.0, 1.0, -2.0])
    options = LossOptions(clip_eps=0.2, loss_mode="gspo", loss_agg_mode="seq-mean-token-mean")
    new = (old + shift).requires_grad_()
    loss, stats = grpo_loss(new, old, old, adv, mask, 3, options)
    loss.backward()

    direct = (old + shift).requires_grad_()
    s = torch.exp(((direct - old) * mask).sum(1) / mask.sum(1))
    expected = -torch.min(s * adv, torch.clamp(s, 0.8, 1.2) * adv).mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(new.grad * mask, direct.grad * mask, atol=1e-7)
    assert stats["clipped_sum"] == 5  # the second sequence (s = e^0.4) is clipped on all its tokens
    assert torch.all(new.grad[1] == 0) and torch.all(new.grad[0][:3] != 0)
    on_policy, _ = grpo_loss(old, old, old, adv, mask, 3, options)  # s = 1: the vanilla loss
    vanilla, _ = grpo_loss(old, old, old, adv, mask, 3, LossOptions(loss_agg_mode="seq-mean-token-mean"))
    assert on_policy.item() == pytest.approx(vanilla.item())


def test_truncated_importance_sampling_weighs_each_token_by_the_capped_engine_mismatch():
    """Each token's policy-gradient loss times min(pi_old / pi_behaviour, cap), no gradient
    through the weight; the KL term is not weighed."""
    logps, mask = _inputs()
    adv = torch.tensor([1.0, -0.5, 2.0])
    behaviour = logps.clone()
    behaviour[0] -= math.log(1.5)  # the engine gave the first sequence's tokens 1/1.5 of the trainer's probability
    behaviour[1] -= math.log(3.0)  # 1/3: weight 3, capped at 2
    options = LossOptions(tis_imp_ratio_cap=2.0)
    new = logps.clone().requires_grad_()
    loss, stats = grpo_loss(new, logps, logps, adv, mask, int(mask.sum()), options, behaviour_per_token_logps=behaviour)
    weights = torch.tensor([1.5, 2.0, 1.0]).unsqueeze(1)
    expected = -(weights * adv.unsqueeze(1) * mask).sum() / mask.sum()  # on policy: each token's loss is -A
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats["tis_weight_sum"] == pytest.approx(1.5 * 3 + 2.0 * 5 + 1.0)
    loss.backward()
    assert new.grad[0, 0].item() == pytest.approx(-1.5 * 1.0 / 9, rel=1e-5)  # d(-w A ratio)/dlogp = -w A
    same, _ = grpo_loss(logps, logps, logps, adv, mask, 9, options, behaviour_per_token_logps=logps)
    plain, _ = grpo_loss(logps, logps, logps, adv, mask, 9, LossOptions())
    assert same.item() == pytest.approx(plain.item())

def test_verdict_credit_keeps_the_loss_on_the_verdict_tokens(tiny_model_dir):
    from spark_vl.config import load_config
    from spark_vl.models import load_processor
    from spark_vl.records import PromptRecord, RolloutGroup
    from spark_vl.train.sequences import Sequence, credit_mask, sequences_with_signal, verdict_tokens

    tokenizer = load_processor(tiny_model_dir, 12544, 12544).tokenizer
    reply = "The image shows blue. The proposed answer is green. \\box{No}"
    ids = tokenizer.encode(reply, add_special_tokens=False)
    first, end = verdict_tokens(ids, tokenizer)
    assert tokenizer.decode(ids[first:end]).strip() == "No"
    assert verdict_tokens(tokenizer.encode("no box here", add_special_tokens=False), tokenizer) is None

    prompt = PromptRecord("j", "judge_pointwise", [], "q", "No", "q", "blue", "s", ["green"])
    solve = PromptRecord("t", "solve", [], "q", "blue", "q", "blue", "s")
    groups = [RolloutGroup(p, [reply] * 2, [ids] * 2, [[0.0] * len(ids)] * 2, rewards=[1.0, 0.0]) for p in (prompt, solve)]
    cfg = load_config(None, ["spark.judge_credit=verdict"])
    sequences, _ = sequences_with_signal(groups, cfg, tokenizer)
    assert [s.credit for s in sequences] == [(first, end)] * 2 + [None] * 2
    assert all(s.credit is None for s in sequences_with_signal(groups, load_config(None, []), tokenizer)[0])
    groups[0].statuses = ["ok", "malformed"]  # a malformed reply carries its advantage on all its tokens
    assert [s.credit for s in sequences_with_signal(groups, cfg, tokenizer)[0]][:2] == [(first, end), None]
    groups[0].statuses = []
    # Balanced judge advantages reach the sequences: a lone label is left as it is; with a second
    # label (weights 2 and 4) both are scaled to their mean weight, 3.
    negative = PromptRecord("k", "judge_pointwise", [], "q", "Yes", "q", "blue", "s", ["blue"])
    more = RolloutGroup(negative, [reply] * 4, [ids] * 4, [[0.0] * len(ids)] * 4, rewards=[1.0, 0.0, 1.0, 0.0])
    balanced = load_config(None, ["spark.balance_judge_advantages=true"])
    lone = sequences_with_signal(groups, balanced, tokenizer)[0]
    assert [s.advantage for s in lone] == pytest.approx([1.0, -1.0, 1.0, -1.0], abs=1e-5)
    two = sequences_with_signal([groups[0], more], balanced, tokenizer)[0]
    assert [s.advantage for s in two] == pytest.approx([1.5, -1.5] + [0.75, -0.75, 0.75, -0.75], abs=1e-5)
    unscaled = sequences_with_signal(groups, load_config(None, ["train.norm_adv_by_std=false"]), tokenizer)[0]
    assert [s.advantage for s in unscaled] == pytest.approx([0.5, -0.5, 0.5, -0.5])

    mask = torch.ones(2, 6, dtype=torch.long)
    rows = [Sequence([], [1] * 6, [0.0] * 6, 1.0, 1.0, (2, 4)), Sequence([], [1] * 6, [0.0] * 6, 1.0, 1.0)]
    assert credit_mask(mask, rows).tolist() == [[0, 0, 1, 1, 0, 0], [1] * 6]
    assert mask.tolist() == [[1] * 6] * 2  # the batch's own mask is untouched


def test_claims_credit_checks_the_reading_and_the_verdict_each_on_its_own(tiny_model_dir):
    """Under `claims` an intact judge reply's verdict carries the advantage of following from its
    own words, and what it says the image shows (truth: blue) the advantage of being right."""
    from spark_vl.config import load_config
    from spark_vl.models import load_processor
    from spark_vl.records import PromptRecord, RolloutGroup
    from spark_vl.train.sequences import credit_mask, sequences_with_signal, token_advantages, verdict_tokens

    tokenizer = load_processor(tiny_model_dir, 12544, 12544).tokenizer
    replies = ["The image shows blue. The proposed answer is green. \\box{No}",  # right reading, consistent
               "The image shows green. The proposed answer is green. \\box{Yes}",  # wrong reading, consistent
               "The image shows green. The proposed answer is green. \\box{No}",  # wrong reading, inconsistent
               "The image shows blue. The proposed answer is green. \\box{Yes}"]  # right reading, inconsistent
    ids = [tokenizer.encode(r, add_special_tokens=False) for r in replies]
    prompt = PromptRecord("j", "judge_pointwise", [], "q", "No", "q", "blue", "s", ["green"])
    group = RolloutGroup(prompt, replies, ids, [[0.0] * len(i) for i in ids], rewards=[1.0, 0.0, 1.0, 0.0],
                         statuses=["ok"] * 4)
    claims = load_config(None, ["spark.judge_credit=claims", "spark.templates=tiny"])
    sequences, flat = sequences_with_signal([group], claims, tokenizer)
    assert flat == 0 and [s.advantage for s in sequences] == pytest.approx([1, 1, -1, -1], abs=1e-5)
    assert [s.credit for s in sequences] == [verdict_tokens(i, tokenizer) for i in ids]
    seen = [s.claim for s in sequences]
    assert [tokenizer.decode(i[c[0]:c[1]]).strip() for i, c in zip(ids, seen)] == ["blue", "green", "green", "blue"]
    assert [c[2] for c in seen] == pytest.approx([1, -1, -1, 1], abs=1e-5)

    width = max(map(len, ids))
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    kept, advantages = credit_mask(mask, sequences), token_advantages(mask, sequences)
    for row, (s, c) in enumerate(zip(sequences, seen)):
        assert kept[row].nonzero().flatten().tolist() == [*range(c[0], c[1]), *range(*s.credit)]
        assert advantages[row, c[0]].item() == pytest.approx(c[2], abs=1e-5)
        assert advantages[row, s.credit[0]].item() == pytest.approx(s.advantage, abs=1e-5)
    # Every verdict consistent, readings that differ: the group still teaches the reading.
    group.responses, group.response_ids = replies[:2] * 2, ids[:2] * 2
    sequences, flat = sequences_with_signal([group], claims, tokenizer)
    assert flat == 0 and [s.advantage for s in sequences] == [0.0] * 4 and all(s.claim for s in sequences)
    # A malformed reply scores 0 on both claims: its verdict advantage sits on all its tokens.
    group.statuses = ["ok", "ok", "ok", "malformed"]
    sequences, _ = sequences_with_signal([group], claims, tokenizer)
    assert sequences[3].credit is None and sequences[3].claim is None and sequences[3].advantage < 0
    # The baseline is the batch's: a group whose replies all box the same inconsistent letter, beside
    # one that is consistent, is pushed away from that letter (a group baseline would see nothing).
    stuck = RolloutGroup(prompt, [replies[2]] * 2, [ids[2]] * 2, [[0.0] * len(ids[2])] * 2, rewards=[1.0, 1.0],
                         statuses=["ok"] * 2)
    fine = RolloutGroup(prompt, [replies[0]] * 2, [ids[0]] * 2, [[0.0] * len(ids[0])] * 2, rewards=[1.0, 1.0],
                        statuses=["ok"] * 2)
    sequences, flat = sequences_with_signal([stuck, fine], claims, tokenizer)
    assert flat == 0 and [s.advantage for s in sequences] == pytest.approx([-1, -1, 1, 1], abs=1e-5)


def test_judge_claims_pairwise_follow_option_a():
    from spark_vl.prompts import Templates, judge_claims
    from spark_vl.records import PromptRecord

    templates = Templates.load("tiny")
    prompt = PromptRecord("p", "judge_pairwise", [], "q", "B", "q", "3", "s", ["4", "3"])  # (A) 4, (B) 3
    assert judge_claims("The image shows 3. (A) is 4. \\box{B}", prompt, templates).consistent
    claims = judge_claims("The image shows 4. (A) is 4. \\box{B}", prompt, templates)
    assert not claims.seen_right and not claims.consistent
    assert judge_claims("The image shows 4. (A) is 4. \\box{A}", prompt, templates).consistent
    assert judge_claims("\\box{B}", prompt, templates) is None


def test_mini_batches_split_whole_groups_in_a_seeded_order():
    from spark_vl.train.schedule import mini_batches
    from spark_vl.train.sequences import Sequence

    sequences = [Sequence([], [1], [0.0], 1.0, 1.0, group=g) for g in (0, 0, 2, 2, 3, 5, 5)]
    assert mini_batches(sequences, None, 0) == [sequences]

    def split(size, seed):
        return [sorted({s.group for s in step}) for step in mini_batches(sequences, size, seed)]

    assert [len(groups) for groups in split(2, 1)] == [2, 2]
    assert [len(groups) for groups in split(3, 1)] == [3, 1]
    for size in (1, 2, 3, 4):  # every sequence once, a group never split over two steps
        steps = mini_batches(sequences, size, seed=7)
        assert sorted(id(s) for step in steps for s in step) == sorted(id(s) for s in sequences)
        assert sum(len(groups) for groups in split(size, 7)) == 4
    step_of_zero = next(step for step in mini_batches(sequences, 2, 1) if any(s.group == 0 for s in step))
    assert [s for s in step_of_zero if s.group == 0] == sequences[:2]  # batch order kept inside a step
    assert split(2, 1) == split(2, 1)  # the seed decides: a resumed run splits alike
    assert len({str(split(2, seed)) for seed in range(20)}) > 1  # and other seeds split otherwise


def test_scheduled_lr_is_constant_or_a_cosine_over_the_iterations():
    from spark_vl.config import load_config
    from spark_vl.train.schedule import scheduled_lr

    constant = load_config(None, ["train.lr=1e-3", "train.iterations=5"]).train
    assert [scheduled_lr(constant, k) for k in range(1, 6)] == [1e-3] * 5
    cosine = load_config(None, ["train.lr=1e-3", "train.iterations=5", "train.lr_scheduler_type=cosine",
                                "train.min_lr_ratio=0.1"]).train
    rates = [scheduled_lr(cosine, k) for k in range(1, 6)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)  # lr first, lr * ratio last
    assert rates[2] == pytest.approx(5.5e-4)  # halfway: the mean of the two
    assert all(a > b for a, b in zip(rates, rates[1:]))
    one = load_config(None, ["train.iterations=1", "train.lr_scheduler_type=cosine"]).train
    assert scheduled_lr(one, 1) == one.lr
