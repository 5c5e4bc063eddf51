"""Peak GPU memory of a training step, predicted on the CPU (the engine of `python bench/memory.py`).

The real step runs (the model of `flant5_imdb.modeling`, the loop's own loss or the model's, the
optimizer's update) on fake tensors: tensors with shapes and dtypes but no data
(`torch._subclasses.FakeTensorMode`), so flan-t5-xl at batch 32 "runs" in seconds. Every storage
an operator creates is counted while it is alive (a weak reference says when it dies), as
`torch.cuda.max_memory_allocated` counts blocks; the peak is split into weights, gradients,
optimizer state, activations (made in the forward) and temporaries (made in the backward or the
update). The optimizer's states are made first (one update of zero gradients), so that the step
measured is the steady state of every step after the first.

What a CUDA device does differently from the CPU the fake step runs on is modelled once, for every
configuration (`CudaRules`, the constants below):
  * autocast: CUDA's cast lists (matrix products to bf16; pow, softmax, sums, losses to float32),
    applied above autograd, so that the cast copies a backward keeps are counted as real autocast
    keeps them (`torch.autocast("cuda")` itself refuses to run without CUDA);
  * dropout: CUDA's fused kernel keeps a one-byte mask (the CPU's keeps a float noise tensor);
  * sdpa: the kernel is the one torch's dispatcher picks for the card, dtype, dropout and T5's float
    bias (`bench/attention_kernel.py`, `--sdpa-kernel auto`): the memory-efficient kernel keeps its
    output and log-sum-exp; the math path, in float32, keeps the attention matrix (`--sdpa-kernel`
    names one instead);
  * the caching allocator rounds each block up to 512 bytes (`ROUND`), and cuBLAS keeps a 32 MiB
    workspace in it (`WORKSPACE`);
  * bitsandbytes' 8-bit AdamW cannot run on fake tensors: its states are allocated from their
    documented layout: a uint8 per element for each moment and a float32 absmax per block of 256,
    32-bit moments for tensors under 4,096 elements and for the embedding and lm_head (this
    project's rule). The paged variant keeps its states in managed memory, outside the allocator's
    count.

What the training loop does differently is run as it runs: `--optimizer-in-backward` applies the
loop's own per-parameter update (`flant5_imdb.optim.UpdateInBackward`) and frees each gradient in its
hook; with CUDA graphs the gradients stay allocated between steps (zeroed in place), so they are
held from the step's start, under the forward's activations too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from bench.attention_kernel import MEMORY_AS, Choice, choose
from flant5_imdb.modeling import architecture_config, build_model, checkpoint_activations, source_mask
from flant5_imdb.optim import UpdateInBackward, embedding_params, param_groups
from flant5_imdb.train import token_loss_sum

GIB = 2**30
ROUND = 512  # the caching allocator's smallest block: every allocation is a multiple of it
WORKSPACE = 32 * 2**20  # cuBLAS's workspace on Hopper (CUBLAS_WORKSPACE_CONFIG :4096:8), one stream
PARTS = ("weights", "gradients", "optimizer", "activations", "temporaries")
VOCAB = 32128  # flan-t5's vocabulary


@dataclass(frozen=True)
class Setup:
    """One training configuration, as far as memory is concerned."""

    model: str = "flan-t5-base"  # an architecture of flant5_imdb.modeling
    batch: int = 8
    source_len: int = 512  # the longest source of a batch (the batch a peak comes from)
    target_len: int = 2  # target tokens with EOS ("0"/"1" + EOS)
    precision: str = "bf16"  # autocast over fp32 weights (train.py's default), or "fp32"
    optim: str = "adamw"  # fused torch AdamW, "adamw8bit" or "paged_adamw8bit"
    checkpointing: bool = False  # activation checkpointing of every T5 block
    attention: str = "sdpa"  # train.py's default, or "eager"
    sdpa_kernel: str = (
        "auto"  # torch's dispatcher's pick for `card` (bench/attention_kernel.py), or "math"/"efficient"
    )
    card: str = "H100"  # what the dispatcher is asked about (only the kernel depends on it)
    loss: str = "loop"  # this project's summed token loss, or "model": the model's own (the Trainer's)
    grad_accum: int = 1
    optimizer_in_backward: bool = False  # each parameter updated in its gradient's hook, the gradient freed
    cuda_graphs: bool = False  # the compiled step replayed as CUDA graphs: gradients held between steps
    tied: bool = False  # transformers' own T5 (lm_head tied to the embedding), as the H200 anchors ran
    vocab: int = VOCAB
    dropout: float = 0.1

    def kernel(self) -> Choice | None:
        """The sdpa kernel this setup runs with (None: eager attention)."""
        if self.attention != "sdpa":
            return None
        if self.sdpa_kernel != "auto":
            return Choice(self.sdpa_kernel, "named")
        return choose(self.card, self.precision, self.dropout)

    def describe(self) -> str:
        choice = self.kernel()
        kernel = f" ({MEMORY_AS[choice.kernel]} kernel)" if choice else ""
        extras = [f"{self.attention} attention{kernel}", self.optim]
        extras += ["activation checkpointing"] * self.checkpointing + ["the model's own loss"] * (
            self.loss == "model"
        )
        extras += ["optimizer in backward"] * self.optimizer_in_backward + ["CUDA graphs"] * self.cuda_graphs
        extras += ["tied lm_head"] * self.tied
        shape = f"batch {self.batch} x {self.source_len} tokens"
        return f"{self.model}, {shape}, {self.precision}, {', '.join(extras)}"


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive, by part, and the parts at the highest total seen."""

    def __init__(self):
        super().__init__()
        self.part = "activations"  # what a new storage counts as
        self.live: dict[int, list] = {}  # id(storage) -> [bytes, part, weak reference]
        self.now = dict.fromkeys(PARTS, 0)
        self.total = self.peak_total = 0
        self.peak = dict(self.now)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.count(t, self.part)
        return out

    def count(self, t: torch.Tensor, part: str) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.live:
            return
        size = -(-storage.nbytes() // ROUND) * ROUND
        self.live[key] = [size, part, weakref.ref(storage, lambda _, key=key: self._free(key))]
        self.now[part] += size
        self.total += size
        if self.total > self.peak_total:
            self.peak, self.peak_total = dict(self.now), self.total

    def recount(self, t: torch.Tensor, part: str) -> None:
        """`t`'s storage counts as `part` from now on (a gradient, an optimizer state)."""
        self.count(t, part)
        entry = self.live[id(t.untyped_storage())]
        self.now[entry[1]] -= entry[0]
        self.now[part] += entry[0]
        entry[1] = part

    def _free(self, key: int) -> None:
        size, part, _ = self.live.pop(key)
        self.now[part] -= size
        self.total -= size


class _EfficientAttention(torch.autograd.Function):
    """The memory-efficient sdpa kernel's memory: the output and a log-sum-exp per row kept, no attention
    matrix; the backward makes the gradients of q, k, v and, where needed, of the bias at full size."""

    @staticmethod
    def forward(ctx, q, k, v, bias):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.bias_shape = None if bias is None else bias.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, bias, out, lse = ctx.saved_tensors
        grad_bias = None
        if bias is not None and ctx.needs_input_grad[3]:
            full = bias.new_empty((q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
            dims = [i for i, (a, b) in enumerate(zip(ctx.bias_shape, full.shape, strict=True)) if a != b]
            grad_bias = full.sum(dims, keepdim=True) if dims else full
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), grad_bias


def _math_attention(q, k, v, bias, dropout_p: float, scale: float | None):
    """sdpa's math path as CUDA runs it: in float32 whatever the inputs' dtype, the attention matrix
    made and kept by the softmax and the dropout."""
    dtype = q.dtype
    q, k, v = (x.float() for x in (q, k, v))
    root = math.sqrt(scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    scores = (q * root) @ (k * root).transpose(-2, -1)
    if bias is not None:
        scores = scores + bias.float()
    attn = torch.softmax(scores, -1)
    if dropout_p:
        attn = torch.native_dropout(attn, dropout_p, True)[0]
    return (attn @ v).to(dtype)


# CUDA autocast's cast lists (PyTorch's AMP documentation), as the Python functions that reach them:
# lower precision for the matrix products, float32 for the functions whose range or accuracy needs it.
_TO_LOW = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm,
           torch.bmm, torch.Tensor.bmm, torch.baddbmm, torch.addmm, torch.addbmm, torch.einsum}  # fmt: skip
_TO_FP32 = {torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.Tensor.__rpow__,
            torch.Tensor.__rtruediv__, torch.softmax, torch.Tensor.softmax, F.softmax, torch.log_softmax,
            torch.Tensor.log_softmax, F.log_softmax, torch.exp, torch.Tensor.exp, torch.log, torch.Tensor.log,
            torch.rsqrt, torch.Tensor.rsqrt, torch.sum, torch.Tensor.sum, torch.prod, torch.cumsum,
            torch.logsumexp, F.layer_norm, F.cross_entropy, F.nll_loss, F.mse_loss, F.softplus, torch.norm,
            F.normalize}  # fmt: skip


class CudaRules(TorchFunctionMode):
    """What a CUDA device does differently from the CPU, where memory is concerned (the module's doc):
    autocast to `dtype` (None: off), dropout's one-byte mask, sdpa's kernel."""

    def __init__(self, dtype: torch.dtype | None, sdpa_kernel: str = "math"):
        super().__init__()
        self.dtype, self.sdpa_kernel = dtype, sdpa_kernel

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            if kwargs.get("training", args[2] if len(args) > 2 else True) and 0 < p < 1:
                return torch.native_dropout(args[0], p, True)[0]
        if func is F.scaled_dot_product_attention:
            (q, k, v), bias = args[:3], kwargs.get("attn_mask")
            if self.dtype is not None:  # on CUDA autocast's lower-precision list
                q, k, v = (x.to(self.dtype) for x in (q, k, v))
                bias = bias.to(self.dtype) if bias is not None and bias.is_floating_point() else bias
            if self.sdpa_kernel == "math":
                return _math_attention(q, k, v, bias, kwargs.get("dropout_p", 0.0), kwargs.get("scale"))
            return _EfficientAttention.apply(q, k, v, bias)
        to = (
            None
            if self.dtype is None
            else self.dtype
            if func in _TO_LOW
            else torch.float32
            if func in _TO_FP32
            else None
        )
        if to is not None:

            def cast(x):
                return (
                    x.to(to) if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != to else x
                )

            args, kwargs = tree_map(cast, args), tree_map(cast, kwargs)
        return func(*args, **kwargs)


class Adam8bitStates:
    """bitsandbytes' AdamW8bit as far as memory goes: its states, allocated at the first step (the
    module's doc); `paged`: in managed memory, which the allocator does not count."""

    def __init__(self, model, paged: bool = False, blocksize: int = 256, min_8bit_size: int = 4096):
        self.params = [p for g in param_groups(model, 0.0) for p in g["params"]]
        self.full = {id(p) for p in embedding_params(model)}
        self.paged, self.blocksize, self.min_8bit_size = paged, blocksize, min_8bit_size
        self.state: dict[int, list[torch.Tensor]] = {}

    def step(self) -> None:
        for p in self.params:
            if p.grad is None or id(p) in self.state or self.paged:
                continue
            if id(p) in self.full or p.numel() < self.min_8bit_size:
                self.state[id(p)] = [torch.zeros_like(p, dtype=torch.float32) for _ in range(2)]
            else:
                blocks = -(-p.numel() // self.blocksize)
                moments = [torch.zeros_like(p, dtype=torch.uint8) for _ in range(2)]
                self.state[id(p)] = moments + [p.new_zeros(blocks, dtype=torch.float32) for _ in range(2)]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.zero_()

    def tensors(self) -> list[torch.Tensor]:
        return [t for ts in self.state.values() for t in ts]


def predict(setup: Setup, cuda: bool = True) -> dict:
    """Peak bytes of a training step of `setup` in its steady state: the parts in GiB (`parts_gib`),
    their sum plus the modelled workspace (`peak_gib`), and the parts alive when the forward ended
    (`after_forward_gib`). `cuda=False`: no CUDA rules and no workspace, what a CPU run of the same
    step holds (the tests compare it with one)."""
    if setup.optimizer_in_backward and (setup.grad_accum > 1 or setup.cuda_graphs):
        raise ValueError(
            "--optimizer-in-backward takes --grad-accum 1 and no CUDA graphs (train.py refuses both)"
        )
    choice = setup.kernel()
    kernel = MEMORY_AS[choice.kernel] if choice else "math"
    tracker = LiveBytes()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = fake_model(setup)
        if setup.checkpointing:  # the recompute in the backward under the forward's CUDA rules, as autocast's
            dtype = torch.bfloat16 if setup.precision == "bf16" else None
            rules = (lambda: (contextlib.nullcontext(), CudaRules(dtype, kernel))) if cuda else None
            checkpoint_activations(model, context_fn=rules)
        model.train()
        optimizer = make_optimizer(model, setup.optim)
        batch = dict(input_ids=torch.zeros((setup.batch, setup.source_len), dtype=torch.long),
                     attention_mask=torch.ones((setup.batch, setup.source_len), dtype=torch.long),
                     labels=torch.zeros((setup.batch, setup.target_len), dtype=torch.long))  # fmt: skip
        after_forward = run_step(model, optimizer, batch, setup, tracker, cuda, kernel)
    parts = {k: v / GIB for k, v in tracker.peak.items()}
    return dict(setup=dataclasses.asdict(setup), parts_gib=parts,
                peak_gib=sum(parts.values()) + (WORKSPACE / GIB if cuda else 0),
                after_forward_gib={k: v / GIB for k, v in after_forward.items()},
                attention_kernel=choice.said() if choice else "eager attention (no sdpa)")  # fmt: skip


def fake_model(setup: Setup):
    """The model of `setup`: this project's FLAN-T5 (its own lm_head), or transformers' own T5 with
    lm_head tied to the embedding (`tied`: what the H200 anchors were measured on)."""
    if not setup.tied:
        return build_model("x", model_config=setup.model, vocab_size=setup.vocab,
                           attn_implementation=setup.attention, dropout=setup.dropout)  # fmt: skip
    import transformers

    cfg = architecture_config(setup.model, setup.vocab, dropout_rate=setup.dropout, tie_word_embeddings=True)
    cfg._attn_implementation = setup.attention
    return transformers.T5ForConditionalGeneration(cfg)


def make_optimizer(model, name: str):
    """The optimizer of `name` (fused AdamW as the loop and the Trainer build it, or 8-bit states)."""
    if name in ("adamw8bit", "paged_adamw8bit"):
        return Adam8bitStates(model, paged=name == "paged_adamw8bit")
    return torch.optim.AdamW(param_groups(model, 0.0), lr=3e-4, fused=True)


def run_step(model, optimizer, batch: dict, setup: Setup, tracker: LiveBytes, cuda: bool = True,
             kernel: str = "math") -> dict:  # fmt: skip
    """One training step on `batch` under `tracker`, after the optimizer's states are made (one update
    of zero gradients); returns the parts alive when the forward ended."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for t in [*model.parameters(), *model.buffers()]:
        tracker.count(t, "weights")
    for t in optimizer_states(optimizer):
        tracker.count(t, "optimizer")
    if setup.cuda_graphs:  # graphed: the gradients are allocated once and stay, zeroed in place
        for p in params:
            p.grad = torch.zeros_like(p)
            tracker.count(p.grad, "gradients")
    for p in params:
        p.register_post_accumulate_grad_hook(lambda p: tracker.recount(p.grad, "gradients"))
    lean = update_in_backward(optimizer, params) if setup.optimizer_in_backward else None
    dtype = torch.bfloat16 if setup.precision == "bf16" else None

    def rules(autocast):
        return CudaRules(autocast, kernel) if cuda else contextlib.nullcontext()

    with tracker:
        # With accumulation, every micro-batch after the first runs beside the gradients of the ones
        # before it: two micro-batches show that.
        for _ in range(min(setup.grad_accum, 2)):
            tracker.part = "activations"
            with rules(dtype):  # autocast covers the forward only, as accelerate's and the Trainer's do
                if setup.loss == "model":
                    loss = model(**batch).loss
                else:
                    loss = token_loss_sum(
                        model, dict(batch, attention_mask=source_mask(model, batch["attention_mask"]))
                    )
            after_forward = dict(tracker.now)
            tracker.part = "temporaries"
            if lean is not None:
                lean.begin(loss)
            with rules(None):
                loss.backward()
                del loss
        if lean is None:
            with rules(None):
                optimizer.step()
        for t in optimizer_states(optimizer):
            tracker.recount(t, "optimizer")
        optimizer.zero_grad(set_to_none=not setup.cuda_graphs)
    return after_forward


def update_in_backward(optimizer, params) -> UpdateInBackward | None:
    """--optimizer-in-backward: the loop's own update for AdamW (each parameter's fused update in its
    gradient's hook, the gradient freed); the 8-bit states are updated in place by bitsandbytes'
    kernel, so for them only the freeing is run (None: nothing to begin)."""
    if not isinstance(optimizer, Adam8bitStates):
        return UpdateInBackward(optimizer)
    for p in params:
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    return None


def optimizer_states(optimizer) -> list[torch.Tensor]:
    if isinstance(optimizer, Adam8bitStates):
        return optimizer.tensors()
    return [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
