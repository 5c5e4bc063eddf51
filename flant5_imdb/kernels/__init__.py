"""The custom kernel path: each kernel with the plain-PyTorch reference it is tested against.

- `norm`: T5's RMSNorm as one fused kernel (torch.compile generates it: Triton on CUDA); the
  reference is transformers' own T5LayerNorm arithmetic. Off CUDA the reference runs.
- `attention`: T5's relative-position-bias attention through `flex_attention`, the bias looked up
  from the bucket table inside the kernel (a `score_mod`) instead of a materialised [H, q, k] tensor,
  differentiable with respect to the table; `use_bias_kernel` routes every encoder layer of a T5
  model through it. Off CUDA the materialised reference runs (flex_attention has no CPU backward).

The training step around them (`flant5_imdb.train`): length buckets (`--bucket-multiple`) give a
few fixed source lengths; `--compile` compiles the forward/backward once, with the source length
symbolic; `--cuda-graphs` replays it as one CUDA graph per bucket, with gradients allocated up front
so that graph memory is never adopted as a .grad. The optimizer step stays outside the graphs: the
fused AdamW kernel, with its non-finite skip on the device, needs no host sync. The `kernels`
preset switches all of it on.
"""
