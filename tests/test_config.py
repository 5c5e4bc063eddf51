import dataclasses

import pytest

from flant5_imdb.config import PRESETS, ConfigError, TrainConfig, build_parser, parse_args, preset

STABLE_FLAGS = ["--preset", "--model", "--model-config", "--tokenizer", "--data", "--output-dir", "--batch-size", "--grad-accum", "--lr", "--epochs", "--max-steps", "--precision", "--optim", "--eval-mode", "--seed"]


def test_stable_flags_exist():
    help_text = build_parser().format_help()
    for flag in STABLE_FLAGS:
        assert flag in help_text, flag


def test_seed_preset_is_the_documented_recipe():
    c = parse_args(["--preset", "seed"])
    assert (c.lr, c.batch_size, c.grad_accum, c.seed, c.epochs) == (3e-4, 8, 1, 42, 2)
    assert (c.adam_beta1, c.adam_beta2, c.adam_eps, c.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
    assert (c.schedule, c.warmup_steps, c.precision, c.max_grad_norm) == ("linear", 0, "fp32", 1.0)
    assert (c.pad_to_max_length, c.max_source_length, c.group_by_length) == (True, 512, False)
    assert (c.verbalizer, c.prompt, c.optim, c.model) == ("digits", None, "adamw", "google/flan-t5-base")


def test_flags_override_preset_and_types_parse():
    c = parse_args(["--preset", "smoke", "--lr", "1e-3", "--max-steps", "7", "--no-group-by-length", "--max-grad-norm", "none"])
    assert c.model_config == "tiny" and c.lr == 1e-3 and c.max_steps == 7
    assert c.group_by_length is False and c.max_grad_norm is None
    assert parse_args([]) == TrainConfig()  # no flags: the fast preset = the defaults


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0


def test_fp16_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match=r"fp16 is refused: T5 overflows in fp16"):
        parse_args(["--precision", "fp16"])


@pytest.mark.parametrize("override, message", [
    (dict(optim="sgd"), r"--optim 'sgd': choose from adamw, adamw8bit, paged_adamw8bit"),
    (dict(batch_size=0), r"--batch-size must be at least 1"),
    (dict(max_steps=0), r"--max-steps must be at least 1"),
    (dict(lr=-1.0), r"--lr must be positive"),
    (dict(cuda_graphs=True, compile=True), r"--cuda-graphs needs --compile and --bucket-multiple"),
    (dict(cuda_graphs=True, bucket_multiple=64), r"--cuda-graphs needs --compile and --bucket-multiple"),
    (dict(bias_kernel=True, attn_implementation="flex_attention"), r"--bias-kernel .* use it with --attn-implementation sdpa or eager"),
])
def test_bad_values_name_the_option(override, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**override)


def test_every_preset_builds():
    for name in PRESETS:
        assert isinstance(preset(name), TrainConfig)
    with pytest.raises(ConfigError, match="choose from"):
        preset("turbo")


def test_kernels_preset_is_fast_plus_the_kernel_flags():
    k = parse_args(["--preset", "kernels"])
    assert (k.bucket_multiple, k.fused_norm, k.bias_kernel, k.compile, k.cuda_graphs) == (64, True, True, True, True)
    same = {f: getattr(k, f) for f in ("lr", "batch_size", "precision", "optim", "epochs", "group_by_length", "seed")}
    assert same == {f: getattr(TrainConfig(), f) for f in same}
