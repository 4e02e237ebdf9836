"""The model card (`onnx_model.card`): written and read back unchanged, and a bad card refused with
a message naming the file and the field. No ONNX Runtime, no model: cards are plain JSON here."""

from __future__ import annotations

import json

import pytest

from distillery.onnx_model.card import CARD_FILE, ModelCard, ModelCardError

CARD = {"name": "ctr", "version": "abc123", "max_length": 64, "inputs": ["input_ids", "attention_mask"],
        "output": "logits", "variants": {"fp32": "student.fp32.onnx", "int8": "student.int8.onnx"},
        "size_mb": {"fp32": 1.5}, "lineage": {"source_model": "/runs/x/student"}, "metrics": {"auc": {"fp32": 0.7}},
        "opset": 17, "exported_at": "2025-01-01T00:00:00Z"}


def test_a_card_round_trips_and_keeps_keys_it_does_not_name(tmp_path):
    card = ModelCard.from_dict(CARD)
    card.write(str(tmp_path))
    again = ModelCard.read(str(tmp_path))
    assert again == card and again.to_dict() == {**CARD, "student_kind": "cross", "presets": {}}
    assert again.opset == 17  # an export detail the model does not declare, kept as written
    assert again.variant_path(str(tmp_path), "int8") == str((tmp_path / "student.int8.onnx").resolve())


def test_defaults_fill_an_old_minimal_card_and_a_numeric_version_becomes_text(tmp_path):
    (tmp_path / CARD_FILE).write_text(json.dumps({"variants": {"int8": "m.onnx"}, "version": 7}))
    card = ModelCard.read(str(tmp_path))
    assert (card.name, card.version, card.student_kind, card.output, card.max_length) == ("ctr", "7", "cross", "logits", None)


@pytest.mark.parametrize("bad, field", [
    ({"max_length": "long"}, "max_length"), ({"max_length": 0}, "max_length"),
    ({"variants": {"int8": None}}, "variants.int8"), ({"variants": ["student.int8.onnx"]}, "variants"),
    ({"student_kind": "three_tower"}, "student_kind"), ({"inputs": []}, "inputs"), ({"name": ""}, "name")])
def test_a_bad_card_is_refused_naming_the_field(tmp_path, bad, field):
    (tmp_path / CARD_FILE).write_text(json.dumps({**CARD, **bad}))
    with pytest.raises(ModelCardError, match=rf"{CARD_FILE}: {field}:"):
        ModelCard.read(str(tmp_path))


def test_a_missing_unparsable_or_non_object_card_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model_card.json"):
        ModelCard.read(str(tmp_path))
    (tmp_path / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelCardError, match="unreadable"):
        ModelCard.read(str(tmp_path))
    (tmp_path / CARD_FILE).write_text("[1, 2]")
    with pytest.raises(ModelCardError, match="expected a JSON object"):
        ModelCard.read(str(tmp_path))


def test_an_absent_variant_names_what_the_card_has_and_assignment_is_validated():
    card = ModelCard.from_dict(CARD)
    with pytest.raises(ValueError, match=r"variant 'fp16': not in .* \(has \['fp32', 'int8'\]\)"):
        card.require_variant("runs/x/onnx", "fp16")
    with pytest.raises(ValueError, match="max_length"):
        card.max_length = -1
