"""T5 relative-position-bias attention: reference (materialised bias) and flex_attention (bias in the kernel).

T5 adds to every attention score a learned bias that depends only on the head and on the bucket
of the relative position (key index - query index); there is no 1/sqrt(d) scaling. The reference
builds the [H, q, k] bias and the [B, H, q, k] scores; the flex version computes the bucket from
the indices inside the kernel and reads the [num_buckets, H] table, so neither is materialised.
"""

from __future__ import annotations

import math

import torch
from torch.nn.attention.flex_attention import flex_attention


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
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
        torch.log(relative_position.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(relative_position.dtype)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


def bias_from_table(table: torch.Tensor, q_len: int, k_len: int, bidirectional: bool, max_distance: int) -> torch.Tensor:
    """The [H, q, k] bias T5 adds to the scores (what T5Attention.compute_bias returns, without the batch axis)."""
    rel = torch.arange(k_len, device=table.device)[None, :] - torch.arange(q_len, device=table.device)[:, None]
    buckets = relative_position_bucket(rel, bidirectional, table.shape[0], max_distance)
    return table[buckets].permute(2, 0, 1)


def attention_reference(q, k, v, table, key_mask=None, *, bidirectional=True, max_distance=128):
    """softmax(QK^T + bias + mask) V with everything materialised. q, k, v: [B, H, L, D]; key_mask: [B, k] bool."""
    scores = q.float() @ k.float().transpose(-1, -2) + bias_from_table(table.float(), q.shape[-2], k.shape[-2], bidirectional, max_distance)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


def attention_flex(q, k, v, table, key_mask=None, *, bidirectional=True, max_distance=128):
    """The same attention through flex_attention, the bias read from `table` per score."""
    num_buckets = table.shape[0]

    def score_mod(score, b, h, q_idx, kv_idx):
        bucket = relative_position_bucket(kv_idx - q_idx, bidirectional, num_buckets, max_distance)
        score = score + table[bucket, h].to(score.dtype)
        if key_mask is not None:
            score = torch.where(key_mask[b, kv_idx], score, -float("inf"))
        return score

    return flex_attention(q, k, v, score_mod=score_mod, scale=1.0)
