"""Model FLOPs of a T5 training example, counted from the architecture.

Matrix multiplies only (2 FLOPs per multiply-add); norms, softmax, activations and the optimizer
are left out, as in the usual MFU convention. For a source of S real tokens, a target of T tokens,
d = d_model, a = n_heads * d_kv (the attention width), f = d_ff, g = 3 projections in a gated
feed-forward (2 otherwise), V = vocabulary:

  encoder, per layer:  S * (4*2*d*a  +  g*2*d*f)  +  2 * 2*S*S*a          (QKVO, FFN, QK^T and AV)
  decoder, per layer:  T * (4*2*d*a  +  2*2*d*a  +  g*2*d*f)              (self QKVO, cross Q and O, FFN)
                     + S * 2*2*d*a                                         (cross K and V over the source)
                     + 2 * 2*T*T*a  +  2 * 2*T*S*a                         (self and cross attention)
  lm head:             T * 2*d*V
  training = 3 x forward (the backward pass costs twice the forward).

Padding is not counted: MFU here is useful work over peak.
"""

from __future__ import annotations


def forward_flops(config, src_len: int, tgt_len: int) -> int:
    d, a, f, v = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.vocab_size
    g = 3 if config.is_gated_act else 2
    s, t = src_len, tgt_len
    enc = config.num_layers * (s * (8 * d * a + g * 2 * d * f) + 4 * s * s * a)
    dec = config.num_decoder_layers * (
        t * (8 * d * a + 4 * d * a + g * 2 * d * f) + s * 4 * d * a + 4 * t * t * a + 4 * t * s * a
    )
    return enc + dec + t * 2 * d * v


def train_flops(config, src_len: int, tgt_len: int) -> int:
    return 3 * forward_flops(config, src_len, tgt_len)


# Bytes per parameter that training keeps whatever the batch: fp32 weight and gradient, and the
# optimizer's two moments (fp32 for AdamW; 8-bit for adamw8bit, except the 32-bit states of the
# embedding and lm_head, counted separately below).
BYTES_PER_PARAM = {"adamw": 4 + 4 + 8, "adamw8bit": 4 + 4 + 2}


def parameters(config) -> int:
    """The parameter count of a T5 of `config`, without allocating it."""
    import torch

    from flant5_imdb.modeling import T5ForConditionalGeneration

    with torch.device("meta"):
        return sum(p.numel() for p in T5ForConditionalGeneration(config).parameters())


def memory_floor_gib(config, optim: str = "adamw") -> float:
    """GiB held before any activation: weights, gradients, optimizer state (computed, not measured)."""
    floor = parameters(config) * BYTES_PER_PARAM[optim]
    if optim == "adamw8bit":  # embedding and lm_head keep 32-bit states: 8 B more than 2 per parameter
        floor += 2 * config.vocab_size * config.d_model * (8 - 2)
    return floor / 2**30


def floors_table() -> str:
    """A table of each FLAN-T5 size's parameters and memory floor (computed, at any batch)."""
    from flant5_imdb.modeling import architecture_config

    lines = [
        "| size | parameters | floor, AdamW (GiB) | floor, adamw8bit (GiB) |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("flan-t5-small", "flan-t5-base", "flan-t5-large", "flan-t5-xl"):
        config = architecture_config(name, 32100)
        lines.append(f"| {name} | {parameters(config) / 1e6:,.0f} M | {memory_floor_gib(config):.1f} | "
                     f"{memory_floor_gib(config, 'adamw8bit'):.1f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":  # python bench/flops.py: the floors table
    import sys
    from pathlib import Path

    # As in bench/profile.py: this folder must not shadow the standard library's `profile`.
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != here]
    print(floors_table())
