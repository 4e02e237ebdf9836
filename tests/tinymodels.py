"""Tiny random Hugging Face models and run directories for tests (no downloads), and where the
third-party samples are. Imported by `conftest.py` and by tests as `tinymodels` (tests/ is on
pytest's pythonpath), never as `conftest`: several conftest modules share that name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """`$DISTILLERY_SHARED_DATA`, else `../shared/data` beside the checkout; None if absent."""
    env = os.environ.get("DISTILLERY_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def _tokenizer():
    from transformers import AutoTokenizer

    from distillery.models import default_backbone

    return AutoTokenizer.from_pretrained(default_backbone())


def save_tiny_bert(path: Path, num_layers: int = 2, hidden: int = 64, num_labels: int = 1, seed: int = 0) -> Path:
    """A random BERT classifier with the MiniLM tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=256,
        num_labels=num_labels,
    )
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


_LM_CORPUS = (
    "Ad impression: query: site: device: os: hour: position: slot: advertiser: ad: text: ad category: | "
    "Question: will the user click this ad? Answer yes or no.\nAnswer: yes no Yes No "
    "running shoes cheap sneakers luxury watch travel deals mobile desktop android ios news sports"
)


def _tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer trained offline on a few sentences (GPT-2 style; eos, no pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([_LM_CORPUS] * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def save_tiny_causal_lm(path: Path, arch: str = "gpt2", seed: int = 0) -> Path:
    """A random 2-layer, 64-wide causal LM (`gpt2` or `llama`) with a tiny BPE tokenizer, saved as a
    Hugging Face folder. Weights are initialised wider than usual so next-token odds vary by row."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = _tiny_bpe_tokenizer()
    n = len(tok)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=n, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.2)
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.2)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"arch {arch!r}: expected gpt2 or llama")
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_run(run_dir: Path, rows_train: int = 300, rows_unlabeled: int = 300, rows_test: int = 200,
                  seed: int = 0, not_kept_every: int = 7) -> Path:
    """A run directory with synthetic data splits and oracle labels (teacher_prob = click_prob),
    every `not_kept_every`-th label marked kept=false. For training and evaluation tests."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillery.data.synthetic import SyntheticConfig, generate, write_splits

    cfg = SyntheticConfig(seed=seed, rows_train=rows_train, rows_unlabeled=rows_unlabeled, rows_test=rows_test,
                          files_per_split=1)
    write_splits(cfg, str(run_dir / "data"))
    (run_dir / "labels").mkdir(parents=True, exist_ok=True)
    for split in ("train", "unlabeled"):
        t = generate(cfg, split)
        n = t.num_rows
        kept = [i % not_kept_every != 0 for i in range(n)] if not_kept_every else [True] * n
        labels = pa.table({
            "id": t["id"], "teacher_prob": t["click_prob"], "confidence": pa.array([1.0] * n),
            "kept": pa.array(kept), "reason": pa.array([None if k else "low_confidence" for k in kept], pa.string()),
            "teacher_id": pa.array(["oracle"] * n),
        })
        pq.write_table(labels, run_dir / "labels" / f"{split}.parquet")
    return run_dir


GRAPHS = ("finite", "nan", "ort_error")  # the hand-built graphs of `save_graph_model`


def save_graph_model(folder: Path, tokenizer_dir: Path, graph: str, version: str, scale: float = 0.05) -> Path:
    """An exported ONNX folder (card, tokenizer, `int8` variant) whose model is a tiny hand-built graph
    over (input_ids, attention_mask) -> logits (batch, 1): `finite` (scale x token count - 1), `nan`
    (every logit NaN), `ort_error` (a Gather past the sequence: ONNX Runtime raises at run time)."""
    import onnx
    from onnx import TensorProto, helper
    from transformers import AutoTokenizer

    assert graph in GRAPHS, graph
    folder.mkdir(parents=True, exist_ok=True)
    const = {"one_axis": helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
             "scale": helper.make_tensor("scale", TensorProto.FLOAT, [], [float("nan") if graph == "nan" else scale]),
             "bias": helper.make_tensor("bias", TensorProto.FLOAT, [], [-1.0]),
             "far": helper.make_tensor("far", TensorProto.INT64, [1], [1_000_000])}
    nodes = [helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT)]
    if graph == "ort_error":
        nodes.append(helper.make_node("Gather", ["mask_f", "far"], ["logits"], axis=1))
    else:
        nodes += [helper.make_node("ReduceSum", ["mask_f", "one_axis"], ["count"], keepdims=1),
                  helper.make_node("Mul", ["count", "scale"], ["scaled"]),
                  helper.make_node("Add", ["scaled", "bias"], ["logits"])]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask")]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    model = helper.make_model(helper.make_graph(nodes, f"ctr_{graph}", ids, [out], list(const.values())),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(folder))
    card = {"name": "ctr", "version": version, "max_length": 64, "inputs": ["input_ids", "attention_mask"],
            "output": "logits", "variants": {"int8": "model.onnx"}}
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder
