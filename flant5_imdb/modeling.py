"""Model construction: pretrained weights, or a named architecture with random init.

Random init exists so that benchmarks (time and memory do not depend on weight values) and tests
run offline. `flan-t5-base` copies google/flan-t5-base's config; `tiny` is a two-layer T5 small
enough to train on a laptop CPU in a minute.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers
from accelerate.utils import extract_model_from_parallel
from safetensors import SafetensorError
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Attention

from flant5_imdb.data.encode import prompt_template, trained_prompt
from flant5_imdb.data.labels import LabelSpace, verbalize
from flant5_imdb.data.reader import DataError
from flant5_imdb.data.source import looks_like_path
from flant5_imdb.rundir import model_folder
from flant5_imdb.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

# What every FLAN-T5 shares (gated-GELU feed-forward, 32 relative-position buckets, untied lm_head).
_T5 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=32,
           relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6,
           is_encoder_decoder=True)  # fmt: skip
ARCHITECTURES = {
    # google/flan-t5-{small,base,large,xl}'s configs: 77 M, 248 M, 783 M and 2.85 B parameters.
    "flan-t5-small": dict(_T5, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
                          num_heads=6, vocab_size=32128),
    "flan-t5-base": dict(_T5, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                         num_heads=12, vocab_size=32128),
    "flan-t5-large": dict(_T5, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
                          num_heads=16, vocab_size=32128),
    "flan-t5-xl": dict(_T5, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                       num_heads=32, vocab_size=32128),
    "tiny": dict(_T5, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4),
}  # fmt: skip
# T5 conventions, shared with every tokenizer this project builds.
SPECIAL_IDS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def architecture_config(name: str, vocab_size: int, **overrides) -> T5Config:
    """The T5Config of a named architecture; the vocabulary grows to fit the tokenizer."""
    if name not in ARCHITECTURES:
        raise ValueError(f"--model-config {name!r}: choose from {', '.join(ARCHITECTURES)}")
    kw = {**ARCHITECTURES[name], **SPECIAL_IDS, **overrides}
    kw["vocab_size"] = max(kw.get("vocab_size", 0), -(-vocab_size // 128) * 128)
    return T5Config(**kw)


class T5ForConditionalGeneration(transformers.T5ForConditionalGeneration):
    """transformers' T5 with lm_head a weight of its own, as every FLAN-T5 (T5 v1.1) checkpoint has it.

    transformers 5 ties lm_head to the shared embedding in every T5 (T5Config forces
    tie_word_embeddings=True, so no saved config can say otherwise), and on loading a checkpoint that
    holds both it unties them again with a warning. Declaring only the embeddings' ties (encoder and
    decoder share `shared`) gives the same weights, no warning, and a random-init model that matches
    flan-t5's parameter count. The class keeps transformers' name: what it saves is a standard T5.
    A checkpoint without an lm_head (an original, tied T5) gets it tied to the embedding on load.
    """

    _tied_weights_keys = {
        k: v
        for k, v in transformers.T5ForConditionalGeneration._tied_weights_keys.items()
        if k != "lm_head.weight"
    }


def build_model(
    model: str,
    *,
    model_config: str | None = None,
    vocab_size: int | None = None,
    attn_implementation: str = "sdpa",
    dropout: float | None = None,
    random_init_hint: bool = False,
) -> T5ForConditionalGeneration:
    """`from_pretrained(model)`, or, with `model_config`, that architecture with random init.

    Weights stay fp32: mixed precision is autocast's job, and T5 keeps `wo` in fp32 anyway.

    Raises:
        ValueError: the weights cannot be had (offline and not cached), or the architecture is unknown.
    """
    extra = {} if dropout is None else {"dropout_rate": dropout}
    if model_config is not None:
        if vocab_size is None:
            raise ValueError("a random-init architecture needs the tokenizer's vocab_size")
        cfg = architecture_config(model_config, vocab_size, **extra)
        cfg._attn_implementation = attn_implementation
        m = T5ForConditionalGeneration(cfg)
        # T5's own init for an untied head (its init follows the forced tie flag): normal, std 1.
        m.lm_head.weight.data.normal_(0.0, m.config.initializer_factor)
        return m
    if looks_like_path(model) and not Path(model).expanduser().exists():
        raise ValueError(f"--model {model}: no such folder")
    try:
        m, info = T5ForConditionalGeneration.from_pretrained(
            model,
            attn_implementation=attn_implementation,
            dtype=torch.float32,
            output_loading_info=True,
            **extra,
        )
    except SafetensorError as e:  # a weights file cut short or changed: an interrupted save or copy
        raise ValueError(
            f"cannot load model '{model}': its weights file is damaged or incomplete ({str(e)[:200]}); "
            "copy or save it again"
        ) from e
    except OSError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"cannot load model '{model}' ({first}); offline, pass a local folder with --model"
            + (", or --model-config flan-t5-base for random init" if random_init_hint else "")
        ) from e
    if "lm_head.weight" in info["missing_keys"]:  # an original T5: its head is the embedding
        m.lm_head.weight = m.shared.weight
    if vocab_size is not None and vocab_size > m.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but model '{model}' only {m.config.vocab_size} embeddings"
        )
    return m


def source_mask(model, attention_mask: torch.Tensor) -> torch.Tensor:
    """The [B, L] source padding mask in the 4D form [B, 1, 1, L] that transformers takes as it is.

    Given the 2D mask, transformers' mask helpers test `padding_mask.all()` in a Python `if` on
    every forward (to drop the mask when nothing is padded): a device-to-host copy per forward
    that stalls the host until the GPU has caught up. A 4D mask counts as already prepared and is
    passed through untested. The values are the ones transformers would build (boolean for sdpa,
    additive 0 / float32-min for eager) broadcast over the queries, so the results are the same;
    the encoder's self-attention and the decoder's cross-attention both read it. flex_attention
    builds a BlockMask from the 2D mask itself and is given that.
    """
    impl = extract_model_from_parallel(model, keep_torch_compile=False).config._attn_implementation
    keep = attention_mask[:, None, None, :].bool()
    if impl == "sdpa":
        return keep
    if impl == "eager":
        return torch.where(
            keep, torch.zeros((), dtype=torch.float32, device=keep.device), torch.finfo(torch.float32).min
        )
    return attention_mask


def checkpoint_activations(model: T5ForConditionalGeneration, context_fn=None) -> None:
    """Keep only each T5 block's input for the backward and recompute the rest there.

    About a third more compute for a fraction of the activation memory: at batch 8 the GPU is
    mostly idle (host-bound), so the recompute costs little there. Non-reentrant checkpointing
    replays the RNG state, so dropout masks, and so the results, are unchanged. `context_fn`:
    torch's checkpoint option (the contexts of the forward and of the recompute).
    """
    kwargs = {"use_reentrant": False, **({"context_fn": context_fn} if context_fn else {})}
    if hasattr(
        model, "activation_checkpointing_enable"
    ):  # transformers >= 5.2x; the older name is deprecated there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # The flag also reaches T5Attention, where it only makes a zero bias require grad (something the
    # reentrant variant needs and this one does not): a setattr that torch.compile cannot trace.
    for module in model.modules():
        if isinstance(module, T5Attention):
            module.gradient_checkpointing = False


SETTINGS_FILE = "flant5_imdb.json"  # beside a saved model: how its inputs and targets were made


def save_settings(path: str | Path, *, verbalizer: str, prompt: str | None, max_source_length: int,
                  classes: LabelSpace) -> None:  # fmt: skip
    """How a model's inputs and targets were made, saved beside its weights for evaluation and prediction."""
    # The template beside the name: what the name means may change, what the model saw does not.
    settings = dict(verbalizer=verbalizer, prompt=prompt, prompt_template=prompt_template(prompt),
                    max_source_length=max_source_length, labels=classes.to_dict(),
                    targets=verbalize(verbalizer, classes))  # fmt: skip
    Path(path, SETTINGS_FILE).write_text(json.dumps(settings, indent=2))


def saved_settings(path: str | Path) -> dict:
    """What `save_settings` wrote beside a model or checkpoint; {} where nothing was (a Hub model)."""
    settings_file = Path(path, SETTINGS_FILE)
    return json.loads(settings_file.read_text()) if settings_file.is_file() else {}


def load_trained(
    path: str,
    *,
    verbalizer: str | None = None,
    prompt: str | None = None,
    max_source_length: int | None = None,
):
    """A saved model (a run's final/, a checkpoint folder, or a Hub id), its tokenizer, and its settings.

    The settings are the ones it was trained with (`flant5_imdb.json` beside it), each replaced by
    the argument where one is given, and the defaults where neither is (a Hub model has none):
    `{"verbalizer", "prompt", "max_source_length", "classes"}`, `classes` a LabelSpace (IMDB's for a
    model saved without one).

    Raises:
        ValueError: the model or tokenizer cannot be loaded.
    """
    path = model_folder(path)
    model = build_model(path)
    tokenizer = load_tokenizer(path)
    saved = saved_settings(path)
    settings = {
        "verbalizer": verbalizer or saved.get("verbalizer", "digits"),
        "prompt": prompt if prompt is not None else trained_prompt(saved),
        "max_source_length": max_source_length or saved.get("max_source_length", 512),
        "classes": LabelSpace.from_dict(saved.get("labels")),
    }
    _warn_about_other_settings(saved, settings, verbalizer, prompt)
    return model, tokenizer, settings


def _warn_about_other_settings(
    saved: dict, settings: dict, verbalizer: str | None, prompt: str | None
) -> None:
    """A verbalizer or prompt other than the one the model was trained with, said by name: scores for
    targets it never learned to write, or for inputs it never saw, measure something else (a Hub
    model, trained with none of them, is not warned about)."""
    if verbalizer and "targets" in saved:
        try:
            targets = verbalize(verbalizer, settings["classes"])
        except ValueError:  # a verbalizer that fits no class list: said where the targets are made
            targets = saved["targets"]
        if targets != saved["targets"]:
            logger.warning("--verbalizer %r: this model was trained to write %s, not %s", verbalizer,
                           ", ".join(saved["targets"]), ", ".join(targets))  # fmt: skip
    trained = trained_prompt(saved) or "none"
    if prompt is not None and "prompt" in saved and _template(prompt) != _template(trained):
        logger.warning("--prompt %r: this model was trained with the prompt %r; its inputs now differ",
                       prompt, trained)  # fmt: skip


def _template(prompt: str) -> str:
    try:
        return prompt_template(prompt)
    except DataError:  # refused, by name, where the inputs are made
        return prompt
