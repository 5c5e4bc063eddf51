import dataclasses

import pytest

from flant5_imdb.config import PRESETS, ConfigError, TrainConfig, build_parser, parse_args, preset

STABLE_FLAGS = [
    "--preset",
    "--model",
    "--model-config",
    "--tokenizer",
    "--data",
    "--output-dir",
    "--batch-size",
    "--grad-accum",
    "--lr",
    "--epochs",
    "--max-steps",
    "--precision",
    "--optim",
    "--eval-mode",
    "--seed",
]


def test_stable_flags_exist():
    help_text = build_parser().format_help()
    for flag in STABLE_FLAGS:
        assert flag in help_text, flag


def test_baseline_preset_is_the_documented_recipe():
    c = parse_args(["--preset", "baseline"])
    assert (c.lr, c.batch_size, c.grad_accum, c.seed, c.epochs) == (3e-4, 8, 1, 42, 2)
    assert (c.adam_beta1, c.adam_beta2, c.adam_eps, c.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
    assert (c.schedule, c.warmup_steps, c.precision, c.max_grad_norm) == ("linear", 0, "fp32", 1.0)
    assert (c.pad_to_max_length, c.max_source_length, c.group_by_length) == (True, 512, False)
    assert (c.verbalizer, c.prompt, c.optim, c.model) == ("digits", None, "adamw", "google/flan-t5-base")


def test_flags_override_preset_and_types_parse():
    c = parse_args(
        [
            "--preset",
            "smoke",
            "--lr",
            "1e-3",
            "--max-steps",
            "7",
            "--no-group-by-length",
            "--max-grad-norm",
            "none",
        ]
    )
    assert c.model_config == "tiny" and c.lr == 1e-3 and c.max_steps == 7
    assert c.group_by_length is False and c.max_grad_norm is None
    assert parse_args([]) == TrainConfig()  # no flags: the fast preset = the defaults


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0


def test_fp16_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match=r"fp16 is refused: T5 overflows in fp16"):
        parse_args(["--precision", "fp16"])


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(optim="sgd"), r"--optim 'sgd': choose from adamw, adamw8bit, paged_adamw8bit"),
        (dict(batch_size=0), r"--batch-size must be at least 1"),
        (dict(max_steps=0), r"--max-steps must be at least 1"),
        (dict(max_source_length=1), r"--max-source-length must be at least 2 \(a token of text and the end"),
        (dict(seed=-5), r"--seed must be in \[0, 2\*\*32\), got -5"),
        (dict(seed=2**32), r"--seed must be in \[0, 2\*\*32\), got 4294967296"),
        (dict(lr=-1.0), r"--lr must be a positive finite number, got -1.0"),
        (dict(lr=float("inf")), r"--lr must be a positive finite number, got inf"),
        (dict(lr=float("nan")), r"--lr must be a positive finite number, got nan"),
        (
            dict(max_grad_norm=-1.0),
            r"--max-grad-norm must be a positive finite number or 'none' for no clipping, got -1.0",
        ),
        (dict(max_grad_norm=0.0), r"--max-grad-norm must be a positive finite number"),
        (dict(warmup_steps=-1), r"--warmup-steps must be 0 or more, got -1"),
        (dict(weight_decay=-1.0), r"--weight-decay must be 0 or more, got -1.0"),
        (dict(adam_beta1=1.5), r"--adam-beta1 must be in \[0, 1\), got 1.5"),
        (dict(adam_beta2=1.0), r"--adam-beta2 must be in \[0, 1\), got 1.0"),
        (dict(adam_eps=0.0), r"--adam-eps must be a positive finite number, got 0.0"),
        (dict(dropout=1.5), r"--dropout must be in \[0, 1\), got 1.5"),
        (dict(dropout=-0.1), r"--dropout must be in \[0, 1\), got -0.1"),
        (dict(cuda_graphs=True, compile=True), r"--cuda-graphs needs --compile and --bucket-multiple"),
        (dict(cuda_graphs=True, bucket_multiple=64), r"--cuda-graphs needs --compile and --bucket-multiple"),
        (
            dict(bias_kernel=True, attn_implementation="flex_attention"),
            r"--bias-kernel .* use it with --attn-implementation sdpa or eager",
        ),
    ],
)
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
    assert (k.bucket_multiple, k.fused_norm, k.bias_kernel, k.compile, k.cuda_graphs) == (
        64,
        True,
        True,
        True,
        True,
    )
    same = {
        f: getattr(k, f)
        for f in ("lr", "batch_size", "precision", "optim", "epochs", "group_by_length", "seed")
    }
    assert same == {f: getattr(TrainConfig(), f) for f in same}


def test_output_dir_naming_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for where in ("notes.txt", "notes.txt/run"):
        with pytest.raises(
            ConfigError, match=rf"--output-dir .*{where}: .*notes.txt is a file, not a folder"
        ):
            TrainConfig(output_dir=str(tmp_path / where))
    assert TrainConfig(output_dir=str(tmp_path / "new" / "run")).output_dir.endswith(
        "run"
    )  # a folder to be made is fine


def test_accepted_edge_values():
    c = TrainConfig(max_grad_norm=None, warmup_steps=0, weight_decay=0.0, adam_beta1=0.0, dropout=0.0)
    assert c.max_grad_norm is None and c.dropout == 0.0


def test_every_option_says_what_a_resume_may_do_with_it():
    from flant5_imdb.config import FIXED, FREE, MATH, resume_kind

    kinds = {f.name: resume_kind(f.name) for f in dataclasses.fields(TrainConfig)}
    assert set(kinds.values()) == {FREE, MATH, FIXED}
    assert {k for k, v in kinds.items() if v == FIXED} == {"model", "model_config", "tokenizer", "optim"}
    assert (
        kinds["lr"] == kinds["batch_size"] == kinds["bias_kernel"] == MATH
    )  # the bias kernel drops attention dropout
    assert kinds["compile"] == kinds["bias_lookup"] == kinds["output_dir"] == FREE


def test_help_is_in_sections_with_the_chosen_presets_defaults(capsys):
    """Every option names its section of --help; --preset smoke shows smoke's values as the defaults."""
    import dataclasses

    from flant5_imdb.config import SECTIONS, TrainConfig, parse_args

    assert {f.metadata["group"] for f in dataclasses.fields(TrainConfig)} == set(SECTIONS)
    with pytest.raises(SystemExit):
        parse_args(["--help", "--preset", "smoke"])
    out = capsys.readouterr().out
    assert [t for t in SECTIONS if f"\n{t}:\n" in out] == list(SECTIONS)
    assert "micro-batch per process (default: 16)" in out and "(default: 0.002)" in out
    batch = out.index("  --batch-size BATCH_SIZE")
    assert out.rindex("\ntraining:\n", 0, batch) > out.rindex("\ndata:\n", 0, batch)  # under its own section


def test_the_docs_option_table_is_the_options_own():
    """docs/options.md's table of every option is written from the fields' declarations (help, default,
    choices, bounds, section): an option added, renamed or re-bounded changes it, and this test says so."""
    from flant5_imdb.config import options_table
    from tests.conftest import ROOT

    docs = (ROOT / "docs" / "options.md").read_text()
    table = docs.split("<!-- options-table -->\n", 1)[1].split("\n<!-- /options-table -->", 1)[0]
    assert table == options_table()
    assert "| `--batch-size` | `8` | micro-batch per process (at least 1) |" in table
    assert "| `--seed` | `42` | seed for initialisation, data order and dropout (in [0, 2**32)) |" in table


def test_the_baseline_preset_states_only_what_differs_from_the_defaults():
    from flant5_imdb.config import PRESETS, TrainConfig

    defaults = TrainConfig()
    assert all(getattr(defaults, k) != v for k, v in PRESETS["baseline"].items())


@pytest.mark.parametrize(
    "flag, said",
    [
        ("--bathc-size", "unknown option --bathc-size; did you mean --batch-size?"),
        ("--learning-rate", "unknown option --learning-rate; this project calls it --lr"),
        ("--per_device_train_batch_size",
         "unknown option --per_device_train_batch_size; this project calls it --batch-size"),
        ("--output_dir", "unknown option --output_dir; did you mean --output-dir?"),
        ("--fp16", "unknown option --fp16; this project calls it --precision bf16 (fp16 overflows in T5)"),
        ("--zzz", "unknown option --zzz"),
    ],
)  # fmt: skip
def test_an_unknown_option_is_one_line_naming_the_one_meant(capsys, flag, said):
    from flant5_imdb.config import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args([flag, "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1  # one line, no usage block
    assert err.startswith(f"error: {said} (") and err.rstrip().endswith("--help lists every option)")


@pytest.mark.parametrize("argv", [["--bathc-size", "8"], ["--lr", "-1"]])
def test_an_option_error_is_said_by_the_first_process_only(monkeypatch, capsys, argv):
    """Every process of a launch parses the same command line: one line from RANK 0, none from the others,
    the same exit status from all."""
    from tests.conftest import load_script

    train = load_script("train")
    said = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        try:
            code = train.main(argv)
        except SystemExit as stopped:
            code = stopped.code
        said[rank] = (code, capsys.readouterr().err)
    assert said["0"][0] == said["1"][0] == 2
    assert said["0"][1].startswith("error: ") and said["0"][1].count("\n") == 1 and said["1"][1] == ""
