"""Student initialisation: a layer subset copies exactly the chosen layers; fresh configs of any size."""

import pytest
import torch

from tinymodels import save_tiny_bert
from distillery.training.init import ModelInit, build_model, find_layer_list, keep_layers


@pytest.fixture(scope="module")
def four_layer_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert4"), num_layers=4, seed=3)


def _source(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path)


def test_layer_subset_copies_the_chosen_layers_embeddings_and_head(four_layer_bert):
    src = _source(four_layer_bert)
    student, tok = build_model(ModelInit(kind="layer_subset", source=str(four_layer_bert), layers=[3, 1]))
    assert student.config.num_hidden_layers == 2 and tok is not None
    _, s_layers = find_layer_list(student)
    _, t_layers = find_layer_list(src)
    for s_idx, t_idx in enumerate([3, 1]):
        s_state, t_state = s_layers[s_idx].state_dict(), t_layers[t_idx].state_dict()
        assert s_state.keys() == t_state.keys()
        for k in s_state:
            assert torch.equal(s_state[k], t_state[k]), (s_idx, k)
    # layer 3 is not layer 0: the copy is by index, not a prefix
    assert not torch.equal(s_layers[0].state_dict()["attention.self.query.weight"],
                           t_layers[0].state_dict()["attention.self.query.weight"])
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, src.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, src.classifier.weight)


def test_layer_subset_round_trips_through_save_pretrained(four_layer_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    student, tok = build_model(ModelInit(kind="layer_subset", source=str(four_layer_bert), layers=[0, 2]))
    student.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = tok(["query: shoes | ad: sneakers"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(student.eval()(**ids).logits, again(**ids).logits, atol=1e-6)
    assert again.config.num_hidden_layers == 2 and again.config.num_labels == 1


def test_layer_subset_out_of_range_and_bad_indices(four_layer_bert):
    with pytest.raises(ValueError, match="out of range"):
        build_model(ModelInit(kind="layer_subset", source=str(four_layer_bert), layers=[0, 4]))
    with pytest.raises(ValueError, match="layers"):
        ModelInit(kind="layer_subset", layers=[1, 1])


def test_fresh_config_of_any_size(four_layer_bert):
    model, _ = build_model(ModelInit(kind="fresh", source=str(four_layer_bert),
                                     overrides={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                "intermediate_size": 64}))
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1 and model.config.num_labels == 1
    with pytest.raises(ValueError, match="overrides.no_such_field"):
        build_model(ModelInit(kind="fresh", source=str(four_layer_bert), overrides={"no_such_field": 1}))


def test_other_encoder_family_distilbert(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(vocab_size=200, dim=32, n_layers=3, n_heads=2, hidden_dim=64, num_labels=1)
    src = DistilBertForSequenceClassification(cfg)
    name, layers = find_layer_list(src)
    assert name.endswith("transformer.layer") and len(layers) == 3
    q2 = layers[2].attention.q_lin.weight.clone()
    keep_layers(src, [2])
    assert src.config.n_layers == 1
    assert torch.equal(find_layer_list(src)[1][0].attention.q_lin.weight, q2)
    out = src(input_ids=torch.tensor([[1, 5, 7]])).logits
    assert out.shape == (1, 1)


def test_seeded_head_init_is_reproducible(four_layer_bert):
    a, _ = build_model(ModelInit(kind="fresh", source=str(four_layer_bert), seed=5, overrides={"num_hidden_layers": 1}))
    b, _ = build_model(ModelInit(kind="fresh", source=str(four_layer_bert), seed=5, overrides={"num_hidden_layers": 1}))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
