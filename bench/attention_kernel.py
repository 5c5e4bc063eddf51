"""Which kernel torch's `scaled_dot_product_attention` runs T5's attention with on a CUDA card, decided as
torch's own dispatcher decides it (`select_sdp_backend` in aten/src/ATen/native/transformers/cuda/
sdp_utils.cpp), for what T5 hands it: a float bias (relative positions plus the padding mask) that needs
a gradient in training, the model's dropout, head dimension 64 for every FLAN-T5.

Reproduced from pytorch's source at commit 001f694 (main, read December 2026; the GPU run's image has
torch 2.11): the backends are tried in order, the first whose checks all pass runs.
  * cuDNN: first in the order only on sm90 and sm10x cards whose runtime cuDNN is newer than 9.15
    (which the CPU cannot know: the uncertain case, both readings given); needs 16-bit inputs, a
    dropout that is a multiple of 1/16 (T5's 0.1 is not), head dimension at most 128 and a multiple of 8.
  * flash: takes no attention mask; T5 always passes its bias, so never.
  * memory-efficient: sm50 to sm121; the head dimension a multiple of the matrix alignment (8 for
    16-bit inputs, 4 for float32, on sm80 and newer); float32, float16 or bfloat16 on sm80 and newer.
    Nothing in its checks looks at the bias's gradient: since torch 2.6 the kernel computes it.
  * math: everything else.
`python bench/env_check.py` asks the card's torch (`torch._fused_sdp_choice`) and prints both, so a GPU
run checks this reading.

For memory the cuDNN kernel is counted as the efficient one (output and log-sum-exp kept, no
attention matrix): the two readings of the uncertain case predict the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "torch's sdp_utils.cpp (pytorch 001f694)"
# Compute capability of the cards a user names (the dispatcher reads nothing else of the card).
CARDS = {"H100": (9, 0), "H200": (9, 0), "B200": (10, 0), "A100": (8, 0), "A10": (8, 6), "L4": (8, 9),
         "L40S": (8, 9), "RTX 4090": (8, 9), "V100": (7, 0), "T4": (7, 5)}  # fmt: skip
HEAD_DIM = 64  # d_kv of every FLAN-T5 size
MEMORY_AS = {"cudnn": "efficient", "efficient": "efficient", "math": "math"}


@dataclass(frozen=True)
class Choice:
    kernel: str  # "cudnn", "efficient" or "math"
    why: str
    other: str | None = None  # the other reading, where the choice depends on what the CPU cannot see
    other_why: str | None = None

    def said(self) -> str:
        text = f"{self.kernel} ({self.why}; {SOURCE})"
        return text if self.other is None else f"{text}; or {self.other} ({self.other_why})"

    def memory_kernels(self) -> set[str]:
        """The kernels whose memory the readings predict (`MEMORY_AS`)."""
        return {MEMORY_AS[k] for k in (self.kernel, self.other) if k is not None}


def choose(card: str = "H100", dtype: str = "bf16", dropout: float = 0.1, head_dim: int = HEAD_DIM) -> Choice:
    """The kernel T5's training attention runs with on `card`, inputs of `dtype` ("bf16" under
    autocast, "fp32" without), attention-probability dropout `dropout`.

    Raises:
        ValueError: a card this table does not name.
    """
    if card not in CARDS:
        raise ValueError(f"card {card!r}: choose from {', '.join(CARDS)}")
    major, minor = CARDS[card]
    half = dtype in ("bf16", "fp16")
    efficient, not_efficient = _efficient(major, half, dtype, head_dim)
    fallback = Choice("efficient", efficient) if not not_efficient else Choice("math", not_efficient)
    cudnn_first = (major == 9 and minor == 0) or major == 10
    if not cudnn_first:
        return _with(fallback, f"{card} is sm{major}{minor}: cuDNN is not first in torch's order there")
    if reason := _not_cudnn(half, dropout, head_dim):
        return _with(fallback, f"not cuDNN: {reason}")
    return Choice(
        "cudnn",
        f"{card} is sm{major}{minor}: torch tries cuDNN first where its runtime cuDNN is newer than 9.15",
        fallback.kernel,
        f"with an older cuDNN: {fallback.why}",
    )


def _with(choice: Choice, before: str) -> Choice:
    return Choice(choice.kernel, f"{before}; flash takes no bias; {choice.why}")


def _efficient(major: int, half: bool, dtype: str, head_dim: int) -> tuple[str, str]:
    """(why the memory-efficient kernel runs, why it cannot: '' where it can)."""
    if not (5 <= major <= 12):
        return "", f"the memory-efficient kernel needs sm50 to sm121 (sm{major}x): the math path"
    # minimum_gemm_alignment: tensor cores from sm80 (sm70 for 16-bit) want 128 bits; 4 elements from sm80
    tensor_cores = major >= 8 or (major == 7 and half)
    alignment = (
        max(4 if major >= 8 else 1, 128 // (16 if half else 32)) if tensor_cores else (4 if major >= 8 else 1)
    )
    if head_dim % alignment:
        return "", f"head dimension {head_dim} is not a multiple of {alignment}: the math path"
    if dtype == "bf16" and major < 8:
        return "", f"bfloat16 needs sm80 or newer for the memory-efficient kernel (sm{major}x): the math path"
    return f"memory-efficient: {dtype}, head dimension {head_dim} a multiple of {alignment}, a float bias", ""


def _not_cudnn(half: bool, dropout: float, head_dim: int) -> str:
    """Why cuDNN's checks fail for T5's attention ('' where they pass)."""
    if not half:
        return "float32 inputs (cuDNN takes 16-bit only)"
    if dropout * 16 != int(dropout * 16):
        return f"dropout {dropout:g} is not a multiple of 1/16"
    if head_dim > 128 or head_dim % 8:
        return f"head dimension {head_dim}"
    return ""
