"""Vocabulary trimming: same pieces and same logits on the texts it was cut for, a far smaller table,
and a tokenizer that survives save/load and ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinymodels import save_tiny_bert
from distillery.data.synthetic import SyntheticConfig, generate
from distillery.data.text import to_text
from distillery.training.init import ModelInit, build_model
from distillery.training.vocab import trim_vocabulary, used_token_ids


@pytest.fixture(scope="module")
def texts():
    return [to_text(r) for r in generate(SyntheticConfig(rows_train=600, rows_unlabeled=1, rows_test=1), "train").to_pylist()]


def _logits(model, tok, texts):
    model.eval()
    with torch.no_grad():
        return model(**tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")).logits


def test_trimmed_model_and_tokenizer_match_the_original_on_their_texts(tmp_path, texts):
    model, tok = build_model(ModelInit(kind="pretrained", source=str(save_tiny_bert(tmp_path / "m"))))
    ref_ids = tok(texts)["input_ids"]
    ref = _logits(model, tok, texts[:40])
    keep = used_token_ids(tok, texts)
    model, trimmed, info = trim_vocabulary(model, tok, texts)
    assert info["before"] == tok.vocab_size and info["after"] == len(keep) < 0.1 * tok.vocab_size
    assert model.get_input_embeddings().weight.shape[0] == len(keep) == model.config.vocab_size
    # Same pieces: every new id is the rank of the old one among the kept ids.
    new_ids = trimmed(texts)["input_ids"]
    assert [[int(keep[i]) for i in row] for row in new_ids] == ref_ids
    assert trimmed.convert_ids_to_tokens(new_ids[0]) == tok.convert_ids_to_tokens(ref_ids[0])
    assert trimmed.pad_token_id == 0 and trimmed.unk_token is not None
    torch.testing.assert_close(_logits(model, trimmed, texts[:40]), ref, rtol=0, atol=1e-6)
    # An unseen word becomes [UNK] (or smaller kept pieces), never an id outside the table.
    odd = trimmed(["zyzzyva quokka"])["input_ids"][0]
    assert max(odd) < len(keep) and trimmed.unk_token_id in odd


def test_trimmed_student_round_trips_through_save_and_onnx(tmp_path, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillery.compress.export import export_onnx
    from distillery.compress.validate import onnx_logits

    model, tok = build_model(ModelInit(kind="pretrained", source=str(save_tiny_bert(tmp_path / "m"))))
    model, trimmed, _ = trim_vocabulary(model, tok, texts)
    model.save_pretrained(tmp_path / "trimmed")
    trimmed.save_pretrained(tmp_path / "trimmed")
    again = AutoTokenizer.from_pretrained(tmp_path / "trimmed")
    assert again(texts[:5])["input_ids"] == trimmed(texts[:5])["input_ids"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "trimmed")
    ref = _logits(model, trimmed, texts[:16]).numpy().ravel()
    torch.testing.assert_close(_logits(reloaded, again, texts[:16]).numpy().ravel(), ref)
    export_onnx(str(tmp_path / "trimmed"), str(tmp_path / "onnx"), max_length=64)
    assert np.max(np.abs(onnx_logits(str(tmp_path / "onnx"), "fp32", texts[:16]) - ref)) < 1e-4


def test_a_bpe_vocabulary_is_refused_with_a_reason():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])))
    with pytest.raises(ValueError, match="only WordPiece.*BPE"):
        trim_vocabulary(torch.nn.Module(), bpe, ["ab"])


def test_stripped_labels_survive_trimming_save_and_the_onnx_scorer(tmp_path, texts):
    """`strip_field_labels`: the tokenizer reads a row without `to_text`'s labels (a third fewer pieces),
    keeps values that merely look like labels, and every later stage that loads the folder
    (save/load, vocabulary trimming, ONNX export, the serving scorer) tokenises the same way."""
    from transformers import AutoTokenizer

    from distillery.compress.export import export_onnx
    from distillery.onnx_model.scorer import OnnxScorer

    source = str(save_tiny_bert(tmp_path / "m"))
    model, tok = build_model(ModelInit(kind="layer_subset", source=source, layers=[0, 1], strip_field_labels=True))
    plain = AutoTokenizer.from_pretrained(source)
    row = "query: ad: free shoes | site: news | hour: 3 | ad: trail | ad category: sports | C1=x"
    assert tok.convert_ids_to_tokens(tok(row)["input_ids"]) == plain.convert_ids_to_tokens(
        plain("ad: free shoes | news | 3 | trail | sports | C1=x")["input_ids"])  # "ad:" inside the query value stays
    lengths = [len(ids) for ids in tok(texts)["input_ids"]], [len(ids) for ids in plain(texts)["input_ids"]]
    assert sum(lengths[0]) < 0.75 * sum(lengths[1])
    model, trimmed, _ = trim_vocabulary(model, tok, texts)
    for text in texts[:20]:
        assert trimmed.convert_ids_to_tokens(trimmed(text)["input_ids"]) == tok.convert_ids_to_tokens(tok(text)["input_ids"])
    model.save_pretrained(tmp_path / "student")
    trimmed.save_pretrained(tmp_path / "student")
    assert AutoTokenizer.from_pretrained(tmp_path / "student")(texts[:20])["input_ids"] == trimmed(texts[:20])["input_ids"]
    export_onnx(str(tmp_path / "student"), str(tmp_path / "onnx"), max_length=64)
    scorer = OnnxScorer(str(tmp_path / "onnx"), "fp32", intra_op_threads=1)
    enc = scorer.encode(texts[:20])
    assert [list(ids[mask == 1]) for ids, mask in zip(enc["input_ids"], enc["attention_mask"])] == trimmed(texts[:20])["input_ids"]


def test_two_tower_students_do_not_strip_labels():
    with pytest.raises(ValueError, match="strip_field_labels: the two-tower student"):
        ModelInit(kind="two_tower", strip_field_labels=True)
