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
