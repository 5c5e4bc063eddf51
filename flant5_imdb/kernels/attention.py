"""T5 relative-position-bias attention: reference (materialised bias) and flex_attention (bias in the kernel).

T5 adds to every attention score a learned bias that depends only on the head and on the bucket
of the relative position (key index - query index); there is no 1/sqrt(d) scaling. The reference
builds the [H, q, k] bias and the [B, H, q, k] scores; the flex version never builds the scores,
and reads the bias per score in one of two ways (`lookup`):

- `table`: computes the bucket from the indices inside the kernel and reads the [num_buckets, H]
  table (384 floats for flan-t5-base). Nothing of size q x k exists, but the backward adds every
  score's gradient onto those 384 floats with atomics: contention, and an order that varies.
- `gathered`: gathers the [H, q, k] bias from the table once per forward (plain PyTorch) and reads
  it per score. The kernel's backward then writes a dense [H, q, k] gradient (summed over the
  batch only), and autograd reduces it onto the table outside the kernel. 12 x 512 x 512 floats
  (12 MiB) per layer at the longest bucket, in exchange for the atomics.

Which is faster is a measurement (the bench has a row for each); both compute the same function.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
from torch.nn.attention.flex_attention import flex_attention

logger = logging.getLogger(__name__)


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """T5's bucketing (transformers' T5Attention._relative_position_bucket), on any integer tensor."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(relative_position.dtype) * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # clamp(min=1) keeps log() finite where the small branch is taken anyway
    large = max_exact + (
        torch.log(relative_position.clamp(min=1).float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(relative_position.dtype)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


def bias_from_table(
    table: torch.Tensor, q_len: int, k_len: int, bidirectional: bool, max_distance: int
) -> torch.Tensor:
    """The [H, q, k] bias T5 adds to the scores (what T5Attention.compute_bias returns, without the batch
    axis).
    """
    rel = (
        torch.arange(k_len, device=table.device)[None, :] - torch.arange(q_len, device=table.device)[:, None]
    )
    buckets = relative_position_bucket(rel, bidirectional, table.shape[0], max_distance)
    return table[buckets].permute(2, 0, 1)


def attention_reference(q, k, v, table, key_mask=None, *, bidirectional=True, max_distance=128):
    """softmax(QK^T + bias + mask) V with everything materialised. q, k, v: [B, H, L, D]; key_mask: [B, k]
    bool.
    """
    scores = q.float() @ k.float().transpose(-1, -2) + bias_from_table(
        table.float(), q.shape[-2], k.shape[-2], bidirectional, max_distance
    )
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


LOOKUPS = ("table", "gathered")


def attention_flex(q, k, v, table, key_mask=None, *, bidirectional=True, max_distance=128, lookup="table"):
    """The same attention through flex_attention, the bias read per score from `table` or from the gathered
    bias.
    """
    num_buckets = table.shape[0]
    if lookup == "gathered":
        # contiguous: the kernel reads it along the key axis, which the gather's view strides by H
        bias = bias_from_table(table, q.shape[-2], k.shape[-2], bidirectional, max_distance).contiguous()

        def bias_at(h, q_idx, kv_idx):
            return bias[h, q_idx, kv_idx]
    elif lookup == "table":

        def bias_at(h, q_idx, kv_idx):
            return table[
                relative_position_bucket(kv_idx - q_idx, bidirectional, num_buckets, max_distance), h
            ]
    else:
        raise ValueError(f"bias lookup {lookup!r}: choose from {', '.join(LOOKUPS)}")

    def score_mod(score, b, h, q_idx, kv_idx):
        score = score + bias_at(h, q_idx, kv_idx).to(score.dtype)
        if key_mask is not None:
            score = torch.where(key_mask[b, kv_idx], score, -float("inf"))
        return score

    return flex_attention(q, k, v, score_mod=score_mod, scale=1.0)


@functools.cache
def _compiled_flex():
    # flex_attention is only a fused kernel when compiled; inside an already compiled model this
    # call is traced into the outer graph.
    return torch.compile(attention_flex, dynamic=None)


def relative_bias_attention(
    q, k, v, table, key_mask=None, *, bidirectional=True, max_distance=128, lookup="table"
):
    """The compiled flex kernel on CUDA; the materialised reference elsewhere (flex_attention has no CPU
    backward).
    """
    if q.is_cuda:
        return _compiled_flex()(
            q, k, v, table, key_mask, bidirectional=bidirectional, max_distance=max_distance, lookup=lookup
        )
    return attention_reference(
        q, k, v, table, key_mask, bidirectional=bidirectional, max_distance=max_distance
    )


def use_bias_kernel(model: torch.nn.Module, lookup: str = "table") -> int:
    """Route every encoder self-attention of a T5 model through `relative_bias_attention`; returns how many.

    T5 computes the [1, H, q, k] bias once, in the first layer (the only one holding the bucket
    table), and hands it down the stack, where each attention implementation adds it to a
    [B, H, q, k] score tensor. Here every layer reads the first layer's table inside the kernel
    instead, so the gradient reaching the table is the same sum over layers.

    The encoder is where the cost is (up to 512 x 512 scores); decoder self-attention over the
    label (two tokens) and cross-attention (no bias) stay as they are.

    flex_attention has no dropout: attention-probability dropout is not applied in these layers
    (the residual and feed-forward dropouts are). With dropout 0 the math is T5's exactly.

    `lookup`: how the kernel reads the bias, `table` or `gathered` (see the module's doc).

    Raises:
        ValueError: the model's attention implementation passes masks this cannot read, or `lookup` is
        unknown.
    """
    impl = model.config._attn_implementation
    if impl not in ("eager", "sdpa"):
        raise ValueError(f"--bias-kernel works with --attn-implementation eager or sdpa, not {impl!r}")
    if lookup not in LOOKUPS:
        raise ValueError(f"--bias-lookup {lookup!r}: choose from {', '.join(LOOKUPS)}")
    blocks = model.encoder.block
    table_owner = blocks[0].layer[0].SelfAttention
    for block in blocks:
        attention = block.layer[0].SelfAttention
        attention.forward = functools.partial(_encoder_attention_forward, attention, table_owner, lookup)
    if model.config.dropout_rate:
        logger.warning(
            "--bias-kernel: no attention-probability dropout in the encoder (flex_attention has none); "
            "the other dropouts (p=%g) stay",
            model.config.dropout_rate,
        )
    return len(blocks)


def _encoder_attention_forward(
    module,
    table_owner,
    lookup,
    hidden_states,
    mask=None,
    key_value_states=None,
    position_bias=None,
    cache=None,
    **kwargs,
):
    """T5Attention.forward for encoder self-attention; returns (output, position_bias, weights) as T5 does."""
    batch, length = hidden_states.shape[:2]
    q, k, v = (
        proj(hidden_states).view(batch, length, -1, module.key_value_proj_dim).transpose(1, 2)
        for proj in (module.q, module.k, module.v)
    )
    # The encoder's padding mask is the same for every query row: [B, 1, q, k] boolean (sdpa) or
    # additive float (eager), or None when nothing is padded.
    key_mask = None
    if mask is not None:
        key_mask = mask[:, 0, 0, :] if mask.dtype == torch.bool else mask[:, 0, 0, :] == 0
    out = relative_bias_attention(
        q,
        k,
        v,
        table_owner.relative_attention_bias.weight,
        key_mask,
        bidirectional=True,
        max_distance=module.relative_attention_max_distance,
        lookup=lookup,
    )
    # No position bias to hand down: every layer reads the table itself.
    return module.o(out.transpose(1, 2).reshape(batch, length, -1)), None, None
