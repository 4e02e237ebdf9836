"""The exported ONNX model, Ray-free: its card and the scorers that run it. Below both the offline
stages (compress, evaluate, the pipeline) and the online package (serving), which import it.

    card.py        ModelCard: model_card.json read, validated, written; variant files kept inside the folder
    scorer.py      OnnxScorer: ONNX Runtime session + tokenizer (+ `to_text` for rows)
    kinds.py       the student kinds (cross-encoder, two-tower) decided once; open_scorer by the card
    two_tower.py   TwoTowerScorer (tower graph + numpy head, ad and request caches)
    cross_candidates.py  CrossCandidateScorer: a cross-encoder's bid candidates from cached token pieces

Submodules are imported directly; importing this package pulls in neither Ray nor ONNX Runtime.
"""
