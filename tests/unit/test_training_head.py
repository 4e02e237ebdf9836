"""The output head: its parameter group gets its own learning rate, and the linear-probe start
fits the head to features that separate the targets."""

import numpy as np
import pytest
import torch

from tinymodels import save_tiny_bert
from distillery.training.head import fit_head_probe, head_parameter_names, output_layer, param_groups
from distillery.training.loop import TokenizedRows, make_loader, predict_logits


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), num_layers=2, hidden=32, seed=3)


def _load(path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_head_names_are_pooler_and_classifier_only(bert_dir):
    model, _ = _load(bert_dir)
    names = head_parameter_names(model)
    assert names == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert output_layer(model) is model.classifier


def test_param_groups_split_lrs_and_skip_frozen(bert_dir):
    model, _ = _load(bert_dir)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    one = param_groups(model, lr=1e-4, head_lr=None, weight_decay=0.0)
    assert len(one) == 1 and one[0]["lr"] == 1e-4
    two = param_groups(model, lr=1e-4, head_lr=3e-3, weight_decay=0.0)
    assert [g["lr"] for g in two] == [1e-4, 3e-3]
    assert sum(p.numel() for p in two[1]["params"]) == 32 * 32 + 32 + 32 + 1
    ids = {id(p) for g in two for p in g["params"]}
    assert id(model.bert.embeddings.word_embeddings.weight) not in ids
    assert sum(len(g["params"]) for g in two) == sum(1 for p in model.parameters() if p.requires_grad)


def test_probe_fits_a_head_that_ranks_a_learnable_target(bert_dir):
    from distillery.metrics import roc_auc

    model, tok = _load(bert_dir)
    rng = np.random.default_rng(0)
    words = ["running shoes", "cheap flights", "hotel deals", "protein powder"]
    texts, target = [], []
    for _ in range(200):
        k = int(rng.integers(len(words)))
        texts.append(f"query: {words[k]} | ad: something")
        target.append(float(k == 0))  # a token-level signal the random encoder's features carry
    rows = TokenizedRows(tok, texts, max_length=24, target=np.array(target, dtype=np.float32))
    loader = make_loader(rows, 64, shuffle=False)
    stats = fit_head_probe(model, loader, l2=0.1)
    after = predict_logits(model, loader)
    assert stats["rows"] == 200 and stats["train_auc"] > 0.95
    assert roc_auc(np.array(target), after) > 0.95  # the head written into the model is the fitted one
    assert abs((1 / (1 + np.exp(-after))).mean() - np.mean(target)) < 0.1  # the bias carries the base rate


def test_probe_skips_constant_targets(bert_dir):
    model, tok = _load(bert_dir)
    rows = TokenizedRows(tok, ["a", "b", "c"], max_length=8, target=np.zeros(3, dtype=np.float32))
    w = model.classifier.weight.detach().clone()
    assert fit_head_probe(model, make_loader(rows, 8, shuffle=False))["skipped"]
    assert torch.equal(model.classifier.weight, w)
