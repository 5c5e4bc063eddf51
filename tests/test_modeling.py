import copy

import pytest
import torch

from flant5_imdb.modeling import build_model, checkpoint_activations, source_mask


def test_flan_t5_base_architecture_matches_the_real_model():
    m = build_model("unused", model_config="flan-t5-base", vocab_size=32100)
    c = m.config
    assert (c.d_model, c.num_layers, c.num_decoder_layers, c.num_heads, c.d_ff) == (768, 12, 12, 12, 2048)
    assert (c.vocab_size, c.feed_forward_proj, c.is_gated_act) == (32128, "gated-gelu", True)
    # Untied embeddings, like google/flan-t5-base: 247,577,856 parameters, no decoder-output rescaling.
    assert m.lm_head.weight is not m.shared.weight
    assert sum(p.numel() for p in m.parameters()) == 247_577_856
    assert c.scale_decoder_outputs is False


def test_untied_head_survives_save_and_load(tmp_path):
    from transformers import T5ForConditionalGeneration

    m = build_model("unused", model_config="tiny", vocab_size=100)
    m.save_pretrained(tmp_path)
    back = T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert back.lm_head.weight is not back.shared.weight
    assert torch.equal(back.lm_head.weight, m.lm_head.weight) and torch.equal(
        back.shared.weight, m.shared.weight
    )


def test_tiny_vocab_grows_to_fit_the_tokenizer_and_dropout_applies():
    m = build_model("unused", model_config="tiny", vocab_size=1000, dropout=0.0)
    assert m.config.vocab_size == 1024 and m.config.dropout_rate == 0.0


def test_missing_weights_give_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"^--model .*no-such-model: no such folder$"):
        build_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"cannot load model .*empty.*--model-config flan-t5-base for random init"
    ):
        build_model(str(tmp_path / "empty"), random_init_hint=True)
    with pytest.raises(
        ValueError, match=r"cannot load model .*empty.*with --model$"
    ):  # evaluate/predict have no --model-config
        build_model(str(tmp_path / "empty"))
    with pytest.raises(
        ValueError, match="choose from flan-t5-small, flan-t5-base, flan-t5-large, flan-t5-xl, tiny"
    ):
        build_model("x", model_config="huge", vocab_size=10)


def test_a_damaged_weights_file_is_said_in_one_line(tmp_path):
    """Weights cut short (a copy or save stopped part way): one line naming the model, not a traceback."""
    build_model("unused", model_config="tiny", vocab_size=100).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        ValueError, match=r"^cannot load model '.*': its weights file is damaged or incomplete \("
    ):
        build_model(str(tmp_path))


def test_activation_checkpointing_recomputes_blocks_with_the_same_results():
    """Dropout on: the recompute replays the RNG state, so losses and gradients stay those of the
    plain model (to float32 rounding), while every block runs a second time in the backward (seen
    from a pre-hook on its first layer: the recompute stops early, after the last tensor it needs)."""
    torch.manual_seed(0)
    model = build_model("unused", model_config="tiny", vocab_size=100, dropout=0.1)
    ckpt = copy.deepcopy(model)
    checkpoint_activations(ckpt)
    calls = {"plain": 0, "ckpt": 0}
    model.encoder.block[1].layer[0].register_forward_pre_hook(
        lambda *a: calls.__setitem__("plain", calls["plain"] + 1)
    )
    ckpt.encoder.block[1].layer[0].register_forward_pre_hook(
        lambda *a: calls.__setitem__("ckpt", calls["ckpt"] + 1)
    )
    x, y = torch.randint(3, 100, (3, 20)), torch.randint(3, 100, (3, 2))
    losses = {}
    for name, m in (("plain", model), ("ckpt", ckpt)):
        m.train()
        torch.manual_seed(1)
        losses[name] = m(input_ids=x, labels=y, use_cache=False).loss
        losses[name].backward()
    assert calls == {"plain": 1, "ckpt": 2}
    torch.testing.assert_close(losses["ckpt"], losses["plain"], rtol=1e-5, atol=0)
    for (name, a), b in zip(ckpt.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [True, False])
def test_source_mask_gives_the_logits_of_the_2d_mask_exactly(attn, padded):
    """The 4D form is the mask transformers would build (or None, with nothing padded): same logits, bit for
    bit.
    """
    torch.manual_seed(0)
    model = build_model("unused", model_config="tiny", vocab_size=100, attn_implementation=attn).eval()
    ids = torch.randint(2, 100, (3, 12))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, 7:] = 0
        mask[2, 3:] = 0
        ids = ids * mask
    dec = torch.tensor([[0, 5], [0, 6], [0, 7]])
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        four_d = model(input_ids=ids, attention_mask=source_mask(model, mask), decoder_input_ids=dec).logits
    assert torch.equal(plain, four_d)
    assert source_mask(model, mask).shape == (3, 1, 1, 12)


def test_source_mask_leaves_flex_attention_its_2d_mask():
    model = build_model("unused", model_config="tiny", vocab_size=100, attn_implementation="flex_attention")
    mask = torch.ones(2, 5, dtype=torch.long)
    assert source_mask(model, mask) is mask
