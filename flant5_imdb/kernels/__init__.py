"""The custom kernel path: each kernel with the plain-PyTorch reference it is tested against.

- `norm`: T5's RMSNorm as one fused kernel (torch.compile generates it: Triton on CUDA); the
  reference is transformers' own T5LayerNorm arithmetic. Off CUDA the reference runs.
- `attention`: T5's relative-position-bias attention through `flex_attention`, the bias looked up
  from the bucket table inside the kernel (a `score_mod`) instead of a materialised [H, q, k] tensor,
  differentiable with respect to the table. Off CUDA flex_attention runs its eager reference path.

Status: the kernels and their CPU checks are here; wiring them into the training step (compiled
step, CUDA graphs, static length buckets) and the GPU measurements are the open part of the kernel
issue.
"""
