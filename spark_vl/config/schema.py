"""The run config's schema: one typed section per area, every key with its default and a
description (docs/config.md is generated from these; a test fails when a key has none).

Every number a run depends on (batch and group sizes, lengths, seeds, rates) lives here;
library code receives a section of this object and hard-codes none of them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spark_vl.records import Kind

PACKAGED_TEMPLATES = ("default", "tiny")  # template pools shipped in spark_vl/prompts; anything else is a file


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Section):
    """Dimensions of the tiny model built offline (head size 32 so vLLM can serve it)."""

    family: Literal["qwen2_5_vl", "qwen2_vl", "qwen3_vl"] = Field("qwen2_5_vl", description="which Qwen-VL architecture")
    vocab_size: int = Field(512, ge=300, le=65536, description="byte-level BPE vocabulary, trained on the task text")
    hidden_size: int = Field(128, ge=16, description="text model width")
    num_layers: int = Field(2, ge=1, description="text model layers")
    num_heads: int = Field(4, ge=1, description="attention heads (head size = hidden_size / num_heads)")
    num_kv_heads: int = Field(2, ge=1, description="key/value heads (grouped-query attention)")
    intermediate_size: int = Field(256, ge=16, description="MLP width")
    vision_hidden_size: int = Field(64, ge=16, description="vision tower width")
    vision_depth: int = Field(2, ge=1, description="vision tower layers")
    vision_heads: int = Field(2, ge=1, description="vision tower attention heads")
    seed: int = Field(0, description="seed of the random weights: the same seed, the same model")

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if (self.hidden_size // self.num_heads) % 8:
            raise ValueError("head size (hidden_size / num_heads) must be a multiple of 8 for mRoPE")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError("vision_hidden_size must be a multiple of vision_heads")
        return self


class VideoConfig(Section):
    """How much of a video prompt the model sees (qwen-vl-utils' names): frames dominate its cost."""

    fps: float = Field(2.0, gt=0, description="frames sampled per second of a video file (a folder of frames is "
                       "one frame per image)")
    max_frames: int = Field(4, ge=2, description="at most this many frames per video, evenly spaced; two frames "
                            "make one temporal patch, so 4 frames of 112x112 cost twice an image's tokens")
    max_pixels: int | None = Field(None, ge=28 * 28, description="pixels per frame; null: model.max_pixels")


class ModelConfig(Section):
    """Which checkpoint to train: a local Hugging Face directory, or the tiny one built offline."""

    path: str | None = Field(None, description="checkpoint directory; null builds the tiny model")
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto: bfloat16 on a GPU that supports it, else float32")
    min_pixels: int = Field(112 * 112, ge=28 * 28, description="images smaller than this are resized up (qwen-vl-utils)")
    max_pixels: int = Field(112 * 112, ge=28 * 28, description="images larger than this are resized down: the "
                            "image tokens per image")
    video: VideoConfig = VideoConfig()

    @model_validator(mode="after")
    def _pixel_bounds(self) -> "ModelConfig":
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class BuiltinDataConfig(Section):
    """The built-in synthetic visual tasks rendered with PIL."""

    families: list[Literal["colour", "count", "position", "size", "arithmetic", "compare", "motion", "describe"]] = (
        Field(["colour", "count"], description="task families, cycled through: the colour of a shape, the number of "
              "circles, left or right, the bigger of two shapes, sums (products at difficulty 3) of drawn digits, two "
              "images compared (which has more circles; do their shapes share a colour), a clip of frames (which "
              "way does the dot move), and `describe`, open-ended (name a colour you see: two are right; no answer, "
              "the judge rewards it)"))
    difficulty: int = Field(1, ge=1, le=3, description="1 (easy) to 3: more colours and counts, distractors, "
                            "closer positions and sizes, larger numbers")
    image_size: int = Field(112, ge=56, le=1024, description="side of the square images, pixels")
    n_train: int = Field(2000, ge=1, description="training prompts rendered")
    n_eval: int = Field(256, ge=1, description="held-out prompts rendered (no scene repeats a training one)")
    seed: int = Field(0, description="seed of the scenes")


class DataConfig(Section):
    """Where prompts come from: dataset files, or the built-in tasks when no path is given."""

    train_path: str | None = Field(None, description="training prompts: JSONL, JSON, Parquet or a datasets folder "
                                   "(docs/data.md); null: the built-in tasks")
    eval_path: str | None = Field(None, description="held-out prompts, as train_path; null: the built-in held-out "
                                  "split, or the training set when train_path is set")
    builtin: BuiltinDataConfig = BuiltinDataConfig()
    instruction: str = Field(
        "Answer with \\boxed{}.",
        description="appended to every task question (the reference uses a reason-then-box instruction)",
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="images larger than this are refused as decompression bombs"
    )


class VLLMConfig(Section):
    """The vLLM OpenAI-compatible server behind `rollout.engine: vllm`: started by the run (in its
    own environment, see docs/scaling.md), or already running at `url`."""

    url: str | None = Field(None, description="a server someone else runs; null: the run starts one")
    served_model_name: str = Field("policy", description="the model name requests ask the server for")
    python: str = Field(".venv-vllm/bin/python", description="interpreter of the vLLM environment")
    host: str = Field("127.0.0.1", description="listen address; nothing beyond loopback unless set here")
    port: int = Field(0, ge=0, le=65535, description="0: a free port")
    args: list[str] = Field(
        ["--dtype", "float32", "--enforce-eager", "--distributed-executor-backend", "uni",
         "--max-model-len", "1024", "--limit-mm-per-prompt", '{"image": 2, "video": 1}',
         "--trust-request-mm-kwargs"],
        description="extra server arguments (these defaults suit the tiny model on a CPU; a video prompt sends its "
        "frame rate and keeps its frames' size per request, which needs --trust-request-mm-kwargs)")
    env: dict[str, str] = Field(
        {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"},
        description="extra environment of the server process")
    startup_timeout_s: float = Field(600.0, gt=0, description="seconds a started server may take to answer its health "
                                     "check before the run fails with the end of its log")
    request_timeout_s: float = Field(600.0, gt=0, description="seconds one request may take")
    max_concurrent_requests: int = Field(32, ge=1, description="requests in flight at once (the server batches them)")
    sleep_during_train: bool = Field(False, description="release GPU memory while the policy trains")


class FilterGroupsConfig(Section):
    """DAPO's dynamic sampling (verl's `algorithm.filter_groups`): when task groups whose rewards
    all agree leave the batch short, sample more task prompts until `prompts_per_batch` groups
    differ. Agreeing groups stay in the rollouts: they carry no gradient, but recycling turns them
    into judge and reflection prompts."""

    enable: bool = Field(False, description="sample more task batches while too few groups carry signal")
    max_num_gen_batches: int = Field(3, ge=1, description="task batches sampled per iteration at most, "
                                     "the first included")


class RolloutConfig(Section):
    """Sampling the responses of each iteration."""

    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers `generate` in the run's process (CPU "
                                          "or GPU); vllm: a vLLM server (see `rollout.vllm`)")
    prompts_per_batch: int = Field(16, ge=1, description="task prompts per iteration (recycled judge and "
                                   "reflection prompts come on top)")
    group_size: int = Field(8, ge=2, description="sampled responses per prompt (n)")
    kind_group_size: dict[Kind, Annotated[int, Field(ge=2)]] = Field(
        {}, description="responses per prompt for each prompt kind (as `kind_temperature`); kinds not named "
        "use `group_size`. More judge samples per prompt give the verdict more signal per step")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    kind_temperature: dict[Kind, Annotated[float, Field(gt=0)]] = Field(
        {}, description="sampling temperature per prompt kind (solve, judge_pointwise, judge_pairwise, "
        "reflect_cot, reflect_answer); kinds not named use `temperature`. Training scores each "
        "response under the temperature it was sampled with")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling (1: off)")
    max_new_tokens: int = Field(24, ge=1, description="longest response, in tokens")
    verify_timeout_s: float = Field(5.0, gt=0, description="hard deadline to grade one response")
    verify_workers: int = Field(2, ge=1, description="grading processes")
    seed: int = Field(0, description="seed of the task prompts drawn and of sampling")
    overlap: bool = Field(
        False, description="one step off-policy (verl's one-step-off-policy mode): the rollouts of iteration k+1 are "
        "sampled while iteration k trains, by the policy before that update (k-1); the update's ratio is taken "
        "against the sampling policy's log-probs (with train.tis_imp_ratio_cap: decoupled PPO). The transformers "
        "engine samples in a second process of the run, the vLLM server in its own")
    filter_groups: FilterGroupsConfig = FilterGroupsConfig()
    vllm: VLLMConfig = VLLMConfig()

    @model_validator(mode="after")
    def _overlap_keeps_the_server_awake(self) -> "RolloutConfig":
        if self.overlap and self.engine == "vllm" and self.vllm.sleep_during_train:
            raise ValueError("rollout.overlap samples while the policy trains, so the vLLM server cannot sleep then: "
                             "set rollout.vllm.sleep_during_train=false or rollout.overlap=false")
        return self

    def temperature_for(self, kind: str) -> float:
        return self.kind_temperature.get(kind, self.temperature)

    def group_size_for(self, kind: str) -> int:
        return self.kind_group_size.get(kind, self.group_size)


class RewardConfig(Section):
    """Your own task reward beside the built-in graders (EasyR1's `reward_function`, verl's
    `custom_reward_function`)."""

    answer_format: Literal["strict", "last_box"] = Field(
        "strict", description="what a response's answer is (docs/grading.md): strict, its one distinct boxed answer "
        "(boxes that agree count, differing boxes are a hedge, a box in a box is stuffing: no answer; text around the "
        "box does not matter); last_box, the last box with at most 300 characters after it, as the field's math "
        "graders read it")
    function: str | None = Field(
        None, description="`path/to/file.py:fn` or `module:fn`, called as fn(response, answer, prompt) -> "
        "float in [0, 1] for task and reflection responses, in the grading workers under "
        "`rollout.verify_timeout_s` (a hang or an error scores 0); null: the built-in grader")


class JudgeRewardConfig(Section):
    """Rewards for open-ended prompts (rows without an answer) from the policy's own pointwise
    judge: each response's reward is the judge's probability of "Yes" for its boxed answer. The
    judge is a frozen snapshot of the policy, moved to the newest rollout policy every `refresh`
    iterations when that policy's judge passes the held-out verifiable anchors; when it does not,
    open-ended prompts get no reward (with a warning) until a later one passes: a policy cannot
    learn to please a judge that stops being checked against verifiable answers."""

    enabled: bool = Field(True, description="false: open-ended rows are left out of training (held-out ones are "
                          "still answered and recorded at each evaluation)")
    refresh: int = Field(10, ge=1, description="iterations between two refreshes of the judge snapshot")
    anchors: int = Field(64, ge=2, description="held-out verifiable pointwise judge prompts (half right answers, "
                         "half wrong) a snapshot is checked on")
    anchor_floor: float = Field(0.75, ge=0, le=1, description="balanced accuracy on the anchors (a constant "
                                "verdict scores 0.5) a judge needs to reward with; judges of 0.58-0.70 on the tiny "
                                "model were exploited (bench/results/open_ended.md)")


class SparkConfig(Section):
    """Recycling of verified rollouts into judge and self-reflection prompts."""

    enabled: bool = Field(True, description="false: plain GRPO (task prompts only), the baseline SPARK is compared with")
    pointwise_prob: float = Field(0.3, ge=0, le=1, description="pointwise share for mixed groups")
    judge_cap: float = Field(0.5, ge=0, le=1, description="judge samples kept, as a share of a batch")
    reflect_cap: float = Field(0.5, ge=0, le=1, description="reflection samples kept, as a share")
    reflect_cot_share: float = Field(0.5, ge=0, le=1, description="share of reflection samples that show a wrong "
                                     "response in full (the others show its extracted answer)")
    templates: str = Field("default", description="prompt template pools: default, tiny, or a JSON file")
    balance_judge_labels: bool = Field(True, description="equal correct and wrong pointwise judge samples")
    pair_judge_answers: bool = Field(
        False, description="with balance_judge_labels: each pointwise sample is kept beside its counterpart, "
        "the same proposed answer for another image of the same question with the other label, so the "
        "proposed answer alone predicts no verdict")
    pairwise_share: float = Field(
        0.0, ge=0, le=1, description="share of the judge samples kept (judge_cap) that pairwise samples may fill "
        "first, when the batch has them; the rest are drawn at random from all (0: all at random, where the paired "
        "pointwise samples of pair_judge_answers leave pairwise ones about one in eight)")
    pairwise_both_orders: bool = Field(
        False, description="each pairwise judge sample also with its two answers swapped, the two kept or dropped "
        "together: the letters balance in every batch, and a judge that boxes one letter scores half on each pair")
    balance_judge_advantages: bool = Field(
        False, description="scale judge advantages so each label (Yes/No, A/B) pushes with equal total weight "
        "per batch: the verdict's marginal holds instead of drifting to one answer for all")
    judge_credit: Literal["reply", "verdict", "claims"] = Field(
        "reply", description="which tokens of a judge reply carry its advantage: the whole reply; only the "
        "verdict in its box when the reply passes `judge_reply_check` (a malformed reply: all of it); or "
        "`claims`: each claim of the reply checked on its own, what it says the image shows against the ground "
        "truth and its verdict against its own words (positive exactly when what it saw is the answer it "
        "restated): judging then trains the policy's reading of the image, and the verdict follows the reasoning")
    judge_reply_check: Literal["verdict", "format", "restate", "grounded"] = Field(
        "format", description="judge reward 1 needs: the right verdict only; also the reply format; "
        "also the proposed answer restated exactly; also the image described as the ground truth")
    judge_reward: JudgeRewardConfig = JudgeRewardConfig()


class WarmupConfig(Section):
    """Supervised format warm-up for the tiny model (real checkpoints skip it)."""

    enabled: bool = Field(True, description="warm up a tiny model before RL (a model from model.path never is)")
    steps: int = Field(200, ge=0, description="supervised steps at least")
    batch_size: int = Field(32, ge=1, description="examples per step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the warm-up")
    verdict_accuracy: float = Field(0.5, ge=0, le=1, description="share of warm-up judge replies that read the "
                                    "image right; each reply's verdict follows from its own reading and the answer "
                                    "it restates, so this share of verdicts is right: 0.5 says nothing, 1.0 a judge "
                                    "as good as its reading of the image")
    above_chance: float | None = Field(
        None, ge=0, le=1, description="after `steps`, keep warming up until greedy accuracy on a probe of "
        "held-back train samples beats chance (1 / the question's number of answers) by this margin for "
        "every question, checked every `check_every` steps up to `max_steps`; null: stop after `steps`")
    verdict_follows: float | None = Field(
        None, ge=0, le=1, description="with `above_chance`: once every question beats chance, keep warming up "
        "on mostly judge prompts until, on the probe's questions, the judge's verdict follows its own words (the "
        "positive verdict exactly when what it says the image shows is the answer it restates; judge replies "
        "given, the verdict scored) for at least this share of replies of every question and judge kind, up to "
        "`max_steps`; null: stop once every question beats chance")
    check_every: int = Field(25, ge=1, description="with `above_chance`: steps between two checks of the probe")
    checkpoint_every: int = Field(50, ge=0, description="save the warm-up (weights, optimizer, sampling state) every "
                                  "N steps; a killed warm-up resumes from the newest to the same weights (0: never)")
    max_steps: int = Field(1000, ge=0, description="with `above_chance`: stop here even below the margin")
    probe_size: int = Field(128, ge=1, description="with `above_chance`: train samples (the last ones) held "
                            "back from the warm-up to check it on")

    @model_validator(mode="after")
    def _steps_fit(self) -> "WarmupConfig":
        if self.above_chance is not None and self.max_steps < self.steps:
            raise ValueError("max_steps must be at least steps when above_chance is set")
        if self.verdict_follows is not None and self.above_chance is None:
            raise ValueError("verdict_follows is checked on the probe of above_chance: set above_chance too "
                             "(0 checks nothing of the task)")
        return self


class LoraConfig(Section):
    """LoRA adapters (PEFT) on the language model: only they train; the base keeps its weights and,
    with the adapters disabled, is the KL reference (no second copy in memory). The vision tower is
    left out, as EasyR1 does: vLLM cannot serve adapters on it. Names as in verl (`lora_rank`,
    `lora_alpha`, `target_modules`) and PEFT."""

    rank: int = Field(0, ge=0, description="adapter rank (verl `lora_rank`); 0: full fine-tuning")
    alpha: float = Field(16.0, gt=0, description="`lora_alpha`: an adapter's update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="`lora_dropout`")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names adapted: the language model's attention and MLP projections")
    exclude_modules: str = Field(r".*visual.*", description="regex of modules never adapted: the vision tower")


class TrainConfig(Section):
    """The GRPO update: the objective, the optimizer, DeepSpeed, the workers, what is kept."""

    iterations: int = Field(20, ge=1, description="SPARK (or GRPO) iterations: rollout, verify, recycle, train")
    processes_per_node: int = Field(1, ge=1, description="above 1: the train task launches DeepSpeed workers")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile: train across these nodes")
    launcher: Literal["torchrun", "deepspeed"] = Field(
        "torchrun", description="how workers start on one node (a hostfile always uses `deepspeed`)")
    master_addr: str | None = Field(None, description="with a hostfile: the address of node 0, where the workers "
                                    "meet; null: the first host (asked over ssh for its address)")
    master_port: int = Field(29500, ge=1, le=65535, description="with a hostfile: the port the workers meet at "
                             "on node 0 (one node picks a free port itself)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                         "memory, more time")
    lr: float = Field(5e-4, gt=0, description="learning rate of the policy update")
    lr_scheduler_type: Literal["constant", "cosine"] = Field(
        "constant", description="the learning rate over the iterations (verl's lr_scheduler_type): constant, or "
        "cosine from `lr` at iteration 1 down to `lr * min_lr_ratio` at the last one")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="with cosine: the last iteration's share of `lr` "
                                "(verl's min_lr_ratio)")
    micro_batch_size: int = Field(32, ge=1, description="sequences per forward and backward pass (per worker); "
                                  "gradients accumulate to the optimizer step")
    max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="instead of micro_batch_size: fill each micro-batch up to this many padded tokens, "
        "rows x (longest prompt + longest completion), images' tokens included (verl use_dynamic_bsz with "
        "ppo_max_token_len_per_gpu), so long judge and reflection prompts go in fewer rows; null: micro_batch_size")
    padding_free: bool = Field(
        False, description="pack each micro-batch's sequences into rows no longer than its longest one, without "
        "padding (TRL padding_free, verl use_remove_padding): each attends to itself only, Qwen's 3-D positions as "
        "in the padded batch; the same log-probs to 1e-5. A masked row still costs its full width of attention "
        "(no variable-length kernel is selected): see docs/benchmarks.md for what it saves")
    updates_per_batch: int = Field(1, ge=1, description="optimizer steps on each rollout batch (GRPO's mu); "
                                   "above 1 the clipped ratio keeps later steps near the sampling policy")
    ppo_mini_batch_size: int | None = Field(
        None, ge=1, description="prompt groups per optimizer step (verl's ppo_mini_batch_size): a batch's groups "
        "with signal, shuffled, make several steps; null: one step on all of them")
    clip_eps: float = Field(0.2, gt=0, description="PPO ratio clip: [1 - clip_eps, 1 + clip_eps_high]")
    clip_eps_high: float | None = Field(None, gt=0, description="upper clip (DAPO's clip-higher; verl "
                                        "clip_ratio_high, TRL epsilon_high); null: clip_eps")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus per token (verl entropy_coeff)")
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "token-mean", description="verl's loss_agg_mode: token-mean (DAPO), seq-mean-token-mean (GRPO paper), "
        "seq-mean-token-sum-norm (Dr. GRPO: token sums over sequences x rollout.max_new_tokens)")
    norm_adv_by_std: bool = Field(True, description="divide group advantages by the group's reward std (verl "
                                  "norm_adv_by_std_in_grpo); false: Dr. GRPO's unbiased r - mean")
    adv_estimator: Literal["grpo", "rloo", "reinforce_plus_plus"] = Field(
        "grpo", description="advantages (verl's name): grpo, (r - group mean) / group std; rloo, r - the mean of the "
        "group's other rewards; reinforce_plus_plus, r whitened over the batch's tokens, no group baseline")
    loss_mode: Literal["vanilla", "gspo"] = Field(
        "vanilla", description="importance ratio (verl policy_loss.loss_mode): vanilla, per token (PPO, GRPO); gspo, "
        "one per sequence, exp of its mean token log-ratio (GSPO; TRL importance_sampling_level: sequence; pair it "
        "with loss_agg_mode seq-mean-token-mean and clips near 3e-4 / 4e-4, as the paper)")
    tis_imp_ratio_cap: float | None = Field(
        None, gt=0, description="rollout correction (verl's name; TRL vllm_importance_sampling_cap): the trainer "
        "scores the rollouts before updating, takes the PPO ratio against that, and weighs each token by "
        "min(trainer / rollout-engine probability, cap), e.g. 2; null: the rollout engine's log-probs are the old "
        "policy's")
    kl_coef: float = Field(1e-3, ge=0, description="weight of the KL penalty to the starting policy (verl kl_coef); "
                           "0: none, and no reference model is loaded")
    kl_loss_type: Literal["k1", "k2", "k3"] = Field(
        "k3", description="KL estimator (verl kl_loss_type): k1, log(pi/ref); k2, log(pi/ref)^2 / 2; k3, "
        "ref/pi - log(ref/pi) - 1 (verl low_var_kl, GRPO's)")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    deepspeed_config: str = Field("configs/deepspeed/zero0.json", description="DeepSpeed JSON (ZeRO stage, dtype); "
                                  "configs/deepspeed/ has ZeRO-0, 2 and 3")
    keep_policies: int | None = Field(
        2, ge=1, description="newest policies kept in the run directory (as verl's max_actor_ckpt_to_keep, "
        "Hugging Face's save_total_limit); the starting and registered ones are kept too; null keeps all")
    keep_every: int = Field(0, ge=0, description="also keep every N-th policy (0: none)")
    warmup: WarmupConfig = WarmupConfig()
    lora: LoraConfig = LoraConfig()
    seed: int = Field(0, description="seed of the warm-up, recycling and mini-batch order")


class EvalConfig(Section):
    """Held-out evaluation of the policy and its judge."""

    every: int = Field(5, ge=1, description="evaluate every N iterations (and after the last)")
    n_task: int = Field(256, ge=1, description="held-out task prompts answered (the first ones of the split)")
    n_judge: int = Field(256, ge=2, description="held-out pointwise judge prompts, half about right answers; as "
                         "many pairwise prompts, half the pairs each in both orders")
    reflect_rounds: int = Field(2, ge=0, description="rounds of test-time self-reflection at most")
    best_of_n: int = Field(0, ge=0, description="sample N answers per held-out task and keep the one the model's "
                           "own judge rates most likely right (eval/task_acc_best_of_n); 0: off")


class TrackingConfig(Section):
    """MLflow: where a run's metrics go and which registered model its policy becomes."""

    experiment: str = Field("spark-vl", description="MLflow experiment of the runs")
    registered_model: str = Field("spark-vl-tiny", description="MLflow registered model the final policy becomes a "
                                  "version of (alias candidate; champion when it is the best)")
    register_every: int = Field(0, ge=0, description="0: register only at the end of a run")


class OrchestrationConfig(Section):
    """Where runs live and how Prefect retries a failed stage."""

    runs_dir: str = Field("runs", description="run directories live here, one per run name")
    retries: int = Field(2, ge=0, description="retries of a failed stage (not of errors a retry cannot mend)")
    retry_delay_s: float = Field(5.0, ge=0, description="seconds before a retry")


class RunConfig(Section):
    """A whole run. `configs/tiny.yaml` is the embedded default."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    spark: SparkConfig = SparkConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    def digest(self) -> str:
        """Short stable hash of the resolved config, for tags and resume checks."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]
