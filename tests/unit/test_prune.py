"""Layer, FFN-unit and head pruning for encoders, encoder-decoders and decoders (tiny random configs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from tinymodels import _tokenizer
from distillery.compress.export import export_onnx
from distillery.compress.prune import layer_counts, load_pruned, prune_ffn, prune_heads, prune_layers, spread
from distillery.onnx_model.scorer import OnnxScorer

V = 30522  # the MiniLM tokenizer's vocabulary, so pruned models export with a real tokenizer
TEXTS = ["query: running shoes | ad: trail runner", "query: cheap flights to lisbon | site: travel | ad: fly for less"]


def _config(kind: str):
    common = dict(num_labels=1)
    return {
        "bert": lambda: T.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128, **common),
        "roberta": lambda: T.RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                           intermediate_size=64, max_position_embeddings=130, pad_token_id=0, **common),
        "distilbert": lambda: T.DistilBertConfig(vocab_size=V, dim=32, n_layers=4, n_heads=4, hidden_dim=64, **common),
        "bart": lambda: T.BartConfig(vocab_size=V, d_model=32, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                     max_position_embeddings=128, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                                     decoder_start_token_id=102, forced_eos_token_id=102, **common),
        "t5": lambda: T.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=4, num_decoder_layers=4, num_heads=4,
                                 pad_token_id=0, eos_token_id=102, decoder_start_token_id=0, **common),
        "gpt2": lambda: T.GPT2Config(vocab_size=V, n_embd=32, n_layer=4, n_head=4, n_positions=128, pad_token_id=0,
                                     bos_token_id=101, eos_token_id=102, **common),
        "llama": lambda: T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=101,
                                       eos_token_id=102, max_position_embeddings=128, **common),
    }[kind]()


ENC_DEC = ("bart", "t5")
FAMILIES = ["bert", "roberta", "distilbert", "bart", "t5", "gpt2", "llama"]


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


def _model(kind: str):
    torch.manual_seed(0)
    return T.AutoModelForSequenceClassification.from_config(_config(kind)).eval()


def _batch(tok, model):
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    if getattr(model.config, "type_vocab_size", 0) in (0, None) or model.config.model_type in ENC_DEC + ("gpt2", "llama", "distilbert"):
        enc.pop("token_type_ids")
    return enc


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("kind", FAMILIES)
def test_layer_and_ffn_pruning_saves_reloads_and_exports(kind, tok, tmp_path):
    model = _model(kind)
    batch = _batch(tok, model)
    keep = {"encoder": [1, 3], "decoder": [0]} if kind in ENC_DEC else [0, 3]
    prune_layers(model, keep)
    prune_ffn(model, 0.5, inputs=[batch])
    expected_layers = {"encoder": 2, "decoder": 1} if kind in ENC_DEC else {next(iter(layer_counts(model))): 2}
    assert layer_counts(model) == expected_layers
    before = _logits(model, batch)
    assert before.shape == (2, 1)

    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    reloaded = load_pruned(str(tmp_path / "m")).eval()
    assert layer_counts(reloaded) == expected_layers
    assert reloaded.num_parameters() == model.num_parameters()
    torch.testing.assert_close(_logits(reloaded, batch), before, atol=1e-5, rtol=0)
    # cache indices follow the new positions (decoders index their KV cache by layer_idx)
    idx = sorted({m.layer_idx for m in reloaded.modules() if getattr(m, "layer_idx", None) is not None})
    if kind != "distilbert":  # DistilBERT has no KV cache, hence no layer_idx
        assert idx == list(range(max(expected_layers.values())))

    export_onnx(str(tmp_path / "m"), str(tmp_path / "onnx"), max_length=32)
    onnx_logits = OnnxScorer(str(tmp_path / "onnx"), variant="fp32", intra_op_threads=1).logits(TEXTS)
    np.testing.assert_allclose(onnx_logits, before[:, 0].numpy(), atol=1e-4)


def test_config_counts_follow_pruning():
    bart = prune_layers(_model("bart"), {"encoder": 3, "decoder": [1, 2]})
    assert (bart.config.encoder_layers, bart.config.decoder_layers) == (3, 2)
    t5 = prune_layers(_model("t5"), {"encoder": [2, 3]})
    assert (t5.config.num_layers, t5.config.num_decoder_layers) == (2, 4)
    first = t5.transformer.encoder.block[0].layer[0].SelfAttention
    assert first.has_relative_attention_bias  # moved from the dropped block 0
    gpt2 = prune_ffn(prune_layers(_model("gpt2"), 1), 0.25)
    assert gpt2.config.n_layer == 1 and gpt2.config.n_inner == 32
    llama = prune_ffn(_model("llama"), 0.5)
    assert llama.config.intermediate_size == 32 and llama.model.layers[0].mlp.gate_proj.out_features == 32


def test_bad_keep_arguments_name_the_problem():
    with pytest.raises(ValueError, match="indices must lie"):
        prune_layers(_model("bert"), [0, 9])
    with pytest.raises(ValueError, match="unknown stack"):
        prune_layers(_model("bert"), {"decoder": [0]})
    with pytest.raises(ValueError, match="keep_ratio"):
        prune_ffn(_model("bert"), 0.0)


def test_spread_keeps_first_and_last():
    assert spread(6, 2) == [0, 5]
    assert spread(6, 3) == [0, 2, 5] or spread(6, 3) == [0, 3, 5]
    assert spread(12, 12) == list(range(12))
    with pytest.raises(ValueError):
        spread(6, 0)


def test_ffn_activation_importance_drops_dead_units(tok):
    model = _model("bert")
    batch = _batch(tok, model)
    dense = model.bert.encoder.layer[0].intermediate.dense
    with torch.no_grad():  # units 0..31 never fire: their pre-activation is hugely negative
        dense.weight[:32] = 0.0
        dense.bias[:32] = -100.0
    prune_ffn(model, 0.5, inputs=[batch])
    assert model.bert.encoder.layer[0].intermediate.dense.bias.min() > -100.0


def test_head_pruning_reloads_and_exports(tok, tmp_path):
    model = _model("bert")
    batch = _batch(tok, model)
    prune_heads(model, keep=2, inputs=[batch])
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 16  # 2 heads x 8 dims
    before = _logits(model, batch)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    reloaded = load_pruned(str(tmp_path / "m"))
    torch.testing.assert_close(_logits(reloaded, batch), before, atol=1e-5, rtol=0)
    export_onnx(str(tmp_path / "m"), str(tmp_path / "onnx"), max_length=32)
    got = OnnxScorer(str(tmp_path / "onnx"), variant="fp32", intra_op_threads=1).logits(TEXTS)
    np.testing.assert_allclose(got, before[:, 0].numpy(), atol=1e-4)


def test_head_pruning_refuses_unsupported_families():
    with pytest.raises(ValueError, match="prune_heads"):
        prune_heads(_model("gpt2"), keep=2)
