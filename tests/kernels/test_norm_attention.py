"""Each kernel against its plain-PyTorch reference, forward and backward, on fresh random inputs.

On this CPU suite the kernels run their CPU paths (flex_attention's eager path, the reference
norm); the GPU script runs the same comparisons on the compiled/Triton paths.
"""

import copy

import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm

from flant5_imdb.kernels import attention as attention_module
from flant5_imdb.kernels.attention import (
    attention_flex,
    attention_reference,
    bias_from_table,
    relative_position_bucket,
    use_bias_kernel,
)
from flant5_imdb.kernels.norm import fuse_norms, rms_norm, rms_norm_reference
from flant5_imdb.kernels.step import mark_length_dynamic
from flant5_imdb.modeling import build_model
from tests.conftest import needs_cuda


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bucket_function_matches_transformers(bidirectional):
    rel = torch.arange(-300, 300)[None, :]
    ours = relative_position_bucket(rel, bidirectional, 32, 128)
    theirs = T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    assert torch.equal(ours, theirs)


def test_bias_matches_t5_compute_bias():
    model = build_model("x", model_config="tiny", vocab_size=100)
    attn = model.encoder.block[0].layer[0].SelfAttention
    expected = attn.compute_bias(17, 23)[0]
    got = bias_from_table(attn.relative_attention_bias.weight, 17, 23, bidirectional=True, max_distance=128)
    torch.testing.assert_close(got, expected)


def attention_inputs(dtype, device, bidirectional, requires_grad):
    torch.manual_seed(0)
    b, h, lq, lk, d = 2, 4, 24, (40 if bidirectional else 24), 16
    q, k, v = (
        torch.randn(b, h, n, d, dtype=dtype, device=device, requires_grad=requires_grad) for n in (lq, lk, lk)
    )
    table = torch.randn(32, h, device=device, requires_grad=requires_grad)
    key_mask = torch.ones(b, lk, dtype=torch.bool, device=device)
    key_mask[1, (30 if bidirectional else 20) :] = False  # padding in the second row
    return q, k, v, table, key_mask


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_flex_attention_with_relative_bias_matches_reference_forward(dtype, tol, bidirectional):
    """CPU: flex_attention has a forward path here but no backward (the GPU test covers that)."""
    q, k, v, table, key_mask = attention_inputs(dtype, "cpu", bidirectional, requires_grad=False)
    kw = dict(bidirectional=bidirectional, max_distance=128)
    out = attention_flex(q, k, v, table, key_mask, **kw)
    assert not out.isnan().any()
    assert rel_err(out, attention_reference(q, k, v, table, key_mask, **kw)) < tol


@pytest.mark.parametrize("lookup", ["table", "gathered"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_both_bias_lookups_match_reference_forward_and_backward(lookup, bidirectional, monkeypatch):
    """flex_attention's own (uncompiled) backward, which it refuses on the CPU only by a device check:
    with that check lifted for this test, both ways of reading the bias give the reference's
    output and the reference's gradients for q, k, v and the bucket table (fp32)."""
    import torch.nn.attention.flex_attention as flex

    monkeypatch.setattr(flex, "_validate_device", lambda *a, **kw: None)
    gathers, gather = [], attention_module.bias_from_table
    monkeypatch.setattr(attention_module, "bias_from_table", lambda *a: gathers.append(a[1:3]) or gather(*a))
    q, k, v, table, key_mask = attention_inputs(torch.float32, "cpu", bidirectional, requires_grad=True)
    kw = dict(bidirectional=bidirectional, max_distance=128)
    out = attention_flex(q, k, v, table, key_mask, lookup=lookup, **kw)
    assert gathers == (
        [(q.shape[-2], k.shape[-2])] if lookup == "gathered" else []
    )  # the [H, q, k] bias, once
    ref = attention_reference(q, k, v, table, key_mask, **kw)
    assert rel_err(out, ref) < 1e-5
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v, table), grad)
    want = torch.autograd.grad(ref, (q, k, v, table), grad)
    for name, g, w in zip(["q", "k", "v", "table"], got, want, strict=True):
        assert rel_err(g, w) < 1e-5, (name, rel_err(g, w))
    assert got[3].abs().sum() > 0


def test_unknown_bias_lookup_is_refused():
    model = build_model("x", model_config="tiny", vocab_size=100)
    with pytest.raises(ValueError, match="--bias-lookup 'dense': choose from table, gathered"):
        use_bias_kernel(model, lookup="dense")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("lookup", ["table", "gathered"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_compiled_flex_attention_matches_reference_forward_and_backward_on_gpu(bidirectional, lookup):
    q, k, v, table, key_mask = attention_inputs(torch.bfloat16, "cuda", bidirectional, requires_grad=True)
    kw = dict(bidirectional=bidirectional, max_distance=128, lookup=lookup)
    out = torch.compile(attention_flex)(q, k, v, table, key_mask, **kw)
    ref = attention_reference(q, k, v, table, key_mask, bidirectional=bidirectional, max_distance=128)
    assert not out.isnan().any() and rel_err(out, ref) < 1e-2
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v, table), grad)
    want = torch.autograd.grad(ref, (q, k, v, table), grad)
    for name, g, w in zip(["q", "k", "v", "table"], got, want, strict=True):
        assert not g.isnan().any() and rel_err(g, w) < 2e-2, (name, rel_err(g, w))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_rms_norm_matches_t5_layer_norm(dtype, tol):
    torch.manual_seed(1)
    layer = T5LayerNorm(64, eps=1e-6)
    layer.weight.data.normal_(1.0, 0.1)
    x = torch.randn(3, 7, 64, dtype=dtype, requires_grad=True)
    out, ref = rms_norm(x, layer.weight, 1e-6), layer(x)
    assert out.dtype == ref.dtype and rel_err(out, ref) < tol
    torch.testing.assert_close(rms_norm_reference(x, layer.weight, 1e-6), ref)
    g = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad(out, (x, layer.weight), g),
        torch.autograd.grad(ref, (x, layer.weight), g),
        strict=True,
    ):
        assert rel_err(a, b) < tol * 5


@needs_cuda
@pytest.mark.gpu
def test_fused_rms_norm_on_gpu():
    layer = T5LayerNorm(768).cuda()
    layer.weight.data.normal_(1.0, 0.1)
    x = torch.randn(8, 512, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out, ref = rms_norm(x, layer.weight, 1e-6), layer(x)
    assert rel_err(out, ref) < 1e-2
    g = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad(out, (x, layer.weight), g),
        torch.autograd.grad(ref, (x, layer.weight), g),
        strict=True,
    ):
        assert not a.isnan().any() and rel_err(a, b) < 2e-2


def test_fuse_norms_swaps_every_norm_and_keeps_the_output():
    model = build_model("x", model_config="tiny", vocab_size=100, dropout=0.0)
    x, y = torch.randint(3, 100, (2, 9)), torch.randint(3, 100, (2, 3))
    before = model(input_ids=x, labels=y).logits
    assert fuse_norms(model) == (2 * 2 + 1) + (
        2 * 3 + 1
    )  # encoder: 2 per layer + final; decoder: 3 per layer + final
    torch.testing.assert_close(model(input_ids=x, labels=y).logits, before)


def padded_batch(vocab=100):
    torch.manual_seed(2)
    ids = torch.randint(3, vocab, (3, 40))
    mask = torch.ones_like(ids)
    mask[0, 25:] = 0  # two padded rows of different lengths, one full row
    mask[2, 7:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=torch.randint(3, vocab, (3, 2)))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [True, False])
def test_bias_kernel_in_t5_matches_t5_forward_and_backward(impl, padded, monkeypatch):
    """Every encoder layer reads layer 0's table: same logits, and the same gradient on every
    parameter (the table's is the sum over layers), fp32 on the CPU (the reference branch)."""
    model = build_model("x", model_config="tiny", vocab_size=100, dropout=0.0, attn_implementation=impl)
    patched = copy.deepcopy(model)
    calls = []
    real = attention_module.relative_bias_attention
    monkeypatch.setattr(
        attention_module, "relative_bias_attention", lambda *a, **kw: calls.append(a[4]) or real(*a, **kw)
    )
    assert use_bias_kernel(patched) == 2
    batch = padded_batch()
    if not padded:
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    ref, out = model(**batch), patched(**batch)
    assert len(calls) == 2  # both encoder layers, no decoder layer
    if padded:
        assert (
            calls[0].tolist() == batch["attention_mask"].bool().tolist()
        )  # the key mask as read from T5's 4-D mask
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-6)
    ref.loss.backward()
    out.loss.backward()
    grads = dict(model.named_parameters())
    for name, p in patched.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-7, msg=name)
    table = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert patched.get_parameter(table).grad.abs().sum() > 0


def test_bias_kernel_traces_as_one_graph_with_dynamic_shapes(counting_backend):
    """No graph breaks (fullgraph=True), one graph for two lengths: the compiled step stays whole."""
    model = build_model("x", model_config="tiny", vocab_size=100, dropout=0.0)
    use_bias_kernel(model)
    fuse_norms(model)
    compiled = torch.compile(model, backend=counting_backend, fullgraph=True)
    for length in (40, 24):  # two lengths, one graph
        batch = padded_batch()
        batch = {k: (v[:, :length].contiguous() if k != "labels" else v) for k, v in batch.items()}
        mark_length_dynamic(batch)
        out, ref = compiled(**batch), model(**batch)
        torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-6)
        out.loss.backward()
    assert len(counting_backend.graphs) == 1  # the second length did not recompile


def test_bias_kernel_refuses_flex_attention_masks():
    model = build_model("x", model_config="tiny", vocab_size=100, attn_implementation="flex_attention")
    with pytest.raises(
        ValueError, match="--bias-kernel works with --attn-implementation eager or sdpa, not 'flex_attention'"
    ):
        use_bias_kernel(model)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("lookup", ["table", "gathered"])
def test_bias_kernel_in_t5_on_gpu_in_bf16(lookup):
    """flan-t5-base encoder, bf16 autocast, batch 8 x 512 with padding: the compiled flex kernel
    inside T5 against T5's own attention, forward and backward (relative error, bf16 tolerance)."""
    torch.manual_seed(3)
    model = build_model("x", model_config="flan-t5-base", vocab_size=32128, dropout=0.0).cuda()
    patched = copy.deepcopy(model)
    use_bias_kernel(patched, lookup=lookup)
    ids = torch.randint(3, 32000, (8, 512), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 300:] = 0
    batch = dict(input_ids=ids, attention_mask=mask, labels=torch.randint(3, 32000, (8, 2), device="cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref, out = model(**batch), patched(**batch)
    assert not out.logits.isnan().any() and rel_err(out.logits, ref.logits) < 2e-2
    ref.loss.backward()
    out.loss.backward()
    grads = dict(model.named_parameters())
    for name in (
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.block.5.layer.0.SelfAttention.q.weight",
        "shared.weight",
    ):
        g, w = patched.get_parameter(name).grad, grads[name].grad
        assert not g.isnan().any() and rel_err(g, w) < 5e-2, (name, rel_err(g, w))
