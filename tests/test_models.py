import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from spark_vl.config import ModelConfig
from spark_vl.models import build_tiny_model, load_model, load_processor, vision_token_ids
from spark_vl.models.inputs import encode_prompts, user_message
from spark_vl.models.forward import completion_batch, completion_logps


def _generate(model_dir, image, greedy=True):
    cfg = ModelConfig()
    processor = load_processor(model_dir, cfg.min_pixels, cfg.max_pixels)
    model = load_model(model_dir, device=torch.device("cpu"))
    inputs = encode_prompts(processor, [user_message([image], "What colour is the shape?", cfg.min_pixels,
                                                      cfg.max_pixels)])
    out = model.generate(**inputs, max_new_tokens=12, do_sample=not greedy,
                         suppress_tokens=vision_token_ids(processor.tokenizer))
    return processor, inputs, out[0, inputs["input_ids"].shape[1]:]


def test_auto_processor_loads_tiny_dir(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text_cfg = model.config.text_config
    head_dim = text_cfg.hidden_size // text_cfg.num_attention_heads
    assert head_dim == 32
    assert sum(text_cfg.rope_parameters["mrope_section"]) == head_dim // 2


def test_tiny_model_generates_on_image_offline(tiny_model_dir, tiny_data_dir):
    image = str(tiny_data_dir / "images" / "train" / "000000.png")
    processor, inputs, completion = _generate(tiny_model_dir, image)
    assert (inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum() == 16
    assert completion.numel() > 0
    assert not set(completion.tolist()) & set(vision_token_ids(processor.tokenizer))


def test_same_seed_same_weights(tmp_path):
    a = build_tiny_model(ModelConfig(), tmp_path / "a")
    b = build_tiny_model(ModelConfig(), tmp_path / "b")
    c = build_tiny_model(ModelConfig(tiny={"seed": 1}), tmp_path / "c")
    sa, sb, sc = (AutoModelForImageTextToText.from_pretrained(p).state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_other_families_build_and_generate(tmp_path, tiny_data_dir, family):
    model_dir = build_tiny_model(ModelConfig(tiny={"family": family}), tmp_path / family)
    image = str(tiny_data_dir / "images" / "train" / "000001.png")
    _, _, completion = _generate(model_dir, image, greedy=False)
    assert completion.numel() > 0


def test_repeated_prompts_are_encoded_once_with_the_same_result(tiny_model_dir, tiny_data_dir):
    """A training batch repeats each prompt per response: encoding the distinct ones and repeating
    their rows and patches must give exactly what encoding every row gives."""
    cfg = ModelConfig()
    processor = load_processor(tiny_model_dir, cfg.min_pixels, cfg.max_pixels)
    images = [str(tiny_data_dir / "images" / "train" / f"{i:06d}.png") for i in range(3)]
    one = user_message(images[:1], "What colour is the shape?", cfg.min_pixels, cfg.max_pixels)
    other = user_message(images[1:2], "How many circles are there?", cfg.min_pixels, cfg.max_pixels)
    two_images = user_message([images[2], images[0]], "Same colour?", cfg.min_pixels, cfg.max_pixels)
    batch = [one, one, other, two_images, other, one, two_images]
    repeated = encode_prompts(processor, batch)
    row_by_row = processor(text=[processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                                 for c in batch],
                           images=[Image.open(p).convert("RGB") for c in batch for p in
                                   [part["image"].removeprefix("file://") for part in c[0]["content"]
                                    if part["type"] == "image"]],
                           padding=True, return_tensors="pt")
    assert set(repeated) == set(row_by_row)
    for key in row_by_row:
        assert torch.equal(repeated[key], row_by_row[key]), key
    assert repeated["pixel_values"].shape[0] == 9 * 64  # 9 images of 8 x 8 patches


def test_sharing_image_features_keeps_log_probs_and_gradients(tiny_model_dir, tiny_data_dir):
    """Training encodes each distinct image once: log-probs and every gradient (the vision
    tower's included) must equal those of encoding each row's own copy."""
    cfg = ModelConfig()
    processor = load_processor(tiny_model_dir, cfg.min_pixels, cfg.max_pixels)
    images = [str(tiny_data_dir / "images" / "train" / f"{i:06d}.png") for i in range(2)]
    one = user_message(images[:1], "What colour is the shape?", cfg.min_pixels, cfg.max_pixels)
    other = user_message(images[1:], "How many circles are there?", cfg.min_pixels, cfg.max_pixels)
    conversations = [one, one, one, other, other, one]
    tokenizer = processor.tokenizer
    completions = [tokenizer.encode(text, add_special_tokens=False) for text in
                   [r"\boxed{red}", r"\boxed{blue}", "x", r"\boxed{2}", r"\boxed{12} and more", r"\boxed{red}"]]
    shared = completion_batch(processor, conversations, completions, torch.device("cpu"))
    assert shared["pixel_values"].shape[0] == 2 * 64 and shared["image_index"].tolist() == [0, 0, 0, 1, 1, 0]
    repeated = {k: v for k, v in shared.items() if k not in ("distinct_image_grid_thw", "image_index")}
    repeated["pixel_values"] = encode_prompts(processor, conversations)["pixel_values"]
    assert repeated["pixel_values"].shape[0] == 6 * 64
    _assert_same_logps_and_grads(tiny_model_dir, shared, repeated)


def test_sharing_video_features_keeps_log_probs_and_gradients(tiny_model_dir, tiny_data_dir, tmp_path):
    """Clips (a folder of frames, and one beside an image) repeated per response are encoded once
    each: the patches repeated row by row are what encoding every row gives, and sharing the
    features keeps log-probs and every gradient."""
    import shutil

    from spark_vl.models.inputs import video_part

    cfg = ModelConfig()
    processor = load_processor(tiny_model_dir, cfg.min_pixels, cfg.max_pixels)
    images = [str(tiny_data_dir / "images" / "train" / f"{i:06d}.png") for i in range(4)]
    for name, frames in (("clip", images), ("other", images[::-1])):
        (tmp_path / name).mkdir()
        for i, image in enumerate(frames):
            shutil.copy(image, tmp_path / name / f"{i:02d}.png")
    clip = user_message([], "Which way?", cfg.min_pixels, cfg.max_pixels, video_part(str(tmp_path / "clip"), cfg))
    both = user_message(images[:1], "Same?", cfg.min_pixels, cfg.max_pixels, video_part(str(tmp_path / "other"), cfg))
    conversations = [clip, clip, both, clip, both]
    repeated = encode_prompts(processor, conversations)
    row_by_row = [encode_prompts(processor, [conversation]) for conversation in conversations]
    for key in ("pixel_values_videos", "pixel_values", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(repeated[key], torch.cat([row[key] for row in row_by_row if key in row])), key
    tokenizer = processor.tokenizer
    completions = [tokenizer.encode(text, add_special_tokens=False) for text in
                   [r"\boxed{left}", r"\boxed{up}", "x", r"\boxed{left} or so", r"\boxed{yes}"]]
    shared = completion_batch(processor, conversations, completions, torch.device("cpu"))
    assert shared["video_index"].tolist() == [0, 0, 1, 0, 1] and shared["image_index"].tolist() == [0, 0]
    assert shared["pixel_values_videos"].shape[0] == 2 * 128  # two distinct clips of 2 x 8 x 8 patches
    unshared = {k: v for k, v in shared.items()
                if k not in ("distinct_image_grid_thw", "image_index", "distinct_video_grid_thw", "video_index")}
    unshared.update({key: repeated[key] for key in ("pixel_values", "pixel_values_videos")})
    _assert_same_logps_and_grads(tiny_model_dir, shared, unshared)


def _assert_same_logps_and_grads(model_dir, shared, unshared):
    """One forward and backward per batch on fresh weights: the same log-probs and gradients,
    the vision tower's included."""

    def logps_and_grads(batch):
        model = load_model(model_dir, device=torch.device("cpu"))
        logps, _ = completion_logps(model, batch)
        (logps * batch["completion_mask"]).sum().backward()
        return logps.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    logps_shared, grads_shared = logps_and_grads(shared)
    logps_unshared, grads_unshared = logps_and_grads(unshared)
    assert torch.allclose(logps_shared, logps_unshared, atol=1e-5)
    assert grads_shared.keys() == grads_unshared.keys() and any("visual" in name for name in grads_shared)
    for name, grad in grads_shared.items():
        assert torch.allclose(grad, grads_unshared[name], atol=1e-5, rtol=1e-4), name


def test_rows_pack_into_bins_no_longer_than_the_longest():
    from spark_vl.models.forward import pack_rows

    lengths = [90, 30, 60, 100, 40, 10, 70]
    bins = pack_rows(lengths)
    assert sorted(row for rows in bins for row in rows) == list(range(len(lengths)))
    assert all(sum(lengths[row] for row in rows) <= max(lengths) for rows in bins)
    assert len(bins) == 4  # 400 tokens in 4 rows of 100, where padding makes 7
    assert pack_rows([5]) == [[0]]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_packed_sequences_give_the_padded_log_probs_entropy_and_gradients(tmp_path, tiny_data_dir, family):
    """Sequences of a micro-batch packed without padding (train.padding_free): each attends to
    itself only, at Qwen's 3-D positions of the padded batch, images and a clip in their order;
    log-probs, entropy and every gradient equal the padded batch's to 1e-5."""
    import shutil

    from spark_vl.models.forward import token_slots
    from spark_vl.models.inputs import video_part

    model_dir = build_tiny_model(ModelConfig(tiny={"family": family}), tmp_path / family)
    cfg = ModelConfig()
    processor = load_processor(model_dir, cfg.min_pixels, cfg.max_pixels)
    images = [str(tiny_data_dir / "images" / "train" / f"{i:06d}.png") for i in range(4)]
    (tmp_path / "clip").mkdir()
    for i, image in enumerate(images):
        shutil.copy(image, tmp_path / "clip" / f"{i:02d}.png")
    one = user_message(images[:1], "What colour is the shape?", cfg.min_pixels, cfg.max_pixels)
    long_question = ("Do the two shapes have the same colour? Look at the first image, then at the second one, "
                     "and compare the colours of the shapes with care before you answer yes or no.")
    two = user_message(images[1:3], long_question, cfg.min_pixels, cfg.max_pixels)  # twice as long as the others
    clip = user_message([], "Which way?", cfg.min_pixels, cfg.max_pixels, video_part(str(tmp_path / "clip"), cfg))
    conversations = [one, one, two, clip, one, one, clip, one]
    tokenizer = processor.tokenizer
    completions = [tokenizer.encode(text, add_special_tokens=False) for text in
                   [r"\boxed{red}", "x", r"\boxed{yes} because both are red", r"\boxed{left}", r"\boxed{blue} it is",
                    r"\boxed{green}", "y", "z"]]
    batch = completion_batch(processor, conversations, completions, torch.device("cpu"))
    assert token_slots(batch, packed=True) < token_slots(batch, packed=False)
    temperature = torch.tensor([1.0, 1.0, 0.7, 1.0, 1.5, 1.0, 1.0, 1.0])

    def forward(packed):
        model = load_model(model_dir, device=torch.device("cpu"))
        logps, entropy = completion_logps(model, batch, temperature, True, vision_token_ids(tokenizer),
                                          entropy_grad=True, packed=packed)
        mask = batch["completion_mask"]
        ((logps + 0.1 * entropy) * mask).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return logps.detach() * mask, entropy.detach() * mask, grads

    padded, packed = forward(False), forward(True)
    assert torch.allclose(packed[0], padded[0], atol=1e-5), (packed[0] - padded[0]).abs().max()
    assert torch.allclose(packed[1], padded[1], atol=1e-5)
    assert packed[2].keys() == padded[2].keys() and any("visual" in name for name in packed[2])
    for name, grad in padded[2].items():
        assert torch.allclose(packed[2][name], grad, atol=1e-5, rtol=1e-4), name
