"""The Ray-free ONNX Runtime scorer: an ONNX folder in, click probabilities out.

    scorer = OnnxScorer("runs/demo/onnx", variant="int8", provider="cpu", intra_op_threads=1)
    probs = scorer.predict_proba(["query: shoes | ad: trail runner sale"])   # (1,) float64
    probs = scorer.predict_rows([{"id": "1", "query": "shoes", "ad_title": "trail runner"}])

Ray Serve replicas wrap one of these; it is also what compression, evaluation, benchmarks and
validation time, so the numbers they report are the serving path's. Texts are truncated to the model
card's `max_length`; on a CPU a call's rows run in length-sorted runs of `sub_batch_rows`, each padded
to its own longest.

On a GPU: `provider="cuda"` with `variant="fp16"` (CUDA execution provider), or
`provider="tensorrt"` with `variant="int8_static"` (a symmetric QDQ graph, see
`compress.quantize`; TensorRT builds and caches an engine under `<model_dir>/.trt_cache`). Both
refuse to start when ORT did not really give them the accelerator. `io_binding=True` binds the
feeds once per call and allocates the output on the session's device (ORT's I/O binding): it
skips ORT's per-run staging of inputs, which is where a small batch's copy time goes on CUDA.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from distillery.onnx_model.card import ModelCard

__all__ = ["OnnxScorer", "sigmoid", "check_row", "provider_options", "PROVIDERS", "TRT_MAX_BATCH",
           "CPU_SUB_BATCH_ROWS"]

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
# The provider each choice must really get (`session.get_providers()`), or the scorer refuses.
_REQUIRED = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
# TensorRT optimisation profile bounds (rows): engines are built for 1..this many rows at once.
TRT_MAX_BATCH = 256
# Rows per ORT run on a CPU (`OnnxScorer.sub_batch_rows`): runs of 2-8 length-sorted rows score alike,
# 1.2x the rows/s of one padded run of 64; 32 is ~1.1x (`bench/ort_runs.py`, 2-core EPYC, both the
# bench's and the demo's student).
CPU_SUB_BATCH_ROWS = 8


def provider_options(provider: str, device_id: int, model_dir: str, variant: str, max_length: int,
                     input_names: list[str]) -> list[dict]:
    """Per-provider option dicts, in `PROVIDERS[provider]` order (ORT's `provider_options`).

    CUDA: the chosen device, and copies on the default stream (the ORT default, kept explicit:
    a single request stream gains nothing from a separate copy stream). TensorRT: FP16 kernels
    allowed, INT8 for int8 variants (the QDQ nodes give the scales, so no calibration table), one
    engine profile from 1×1 to TRT_MAX_BATCH×max_length tokens so new shapes do not rebuild it,
    and the built engine cached beside the model (building takes minutes; loading seconds).
    """
    cuda = {"device_id": device_id, "do_copy_in_default_stream": True}
    if provider == "cuda":
        return [cuda, {}]
    if provider == "tensorrt":
        def shapes(rows: int, seq: int) -> str:
            return ",".join(f"{name}:{rows}x{seq}" for name in input_names)

        trt = {
            "device_id": device_id,
            "trt_fp16_enable": True,
            "trt_int8_enable": variant.startswith("int8"),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": os.path.join(model_dir, ".trt_cache"),
            "trt_profile_min_shapes": shapes(1, 1),
            "trt_profile_opt_shapes": shapes(32, max(1, max_length // 2)),
            "trt_profile_max_shapes": shapes(TRT_MAX_BATCH, max_length),
        }
        return [trt, cuda, {}]
    return [{}]


def check_row(i: int, x: Any) -> Mapping[str, Any]:
    """`x` if it is a row dict; else a TypeError naming the input."""
    if not isinstance(x, Mapping):
        raise TypeError(f"inputs[{i}]: expected a row text (str) or a row (dict), got {type(x).__name__}")
    return x


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic in float64 (no overflow warnings for large |x|)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


class OnnxScorer:
    """One ORT session over `model_dir/<variant file>` plus the folder's tokenizer.

    `variant`: a key of the card's `variants` (`fp32`, `int8`, `int8_static`, `fp16`).
    `provider`: `cpu`, `cuda` or `tensorrt`; the GPU ones refuse to start unless ORT really gave
    them (the onnxruntime-gpu wheel lists CUDA even where it then falls back to CPU).
    `intra_op_threads`: ORT intra-op threads (None = ORT's default, one per core).
    `io_binding`: run through ORT's I/O binding, output allocated on the provider's device.
    `device_id`: the GPU for `cuda` / `tensorrt`.
    `sub_batch_rows`: rows per ORT run. A call's rows are sorted by token length and run this many at
    a time, each run padded to its own longest: on a CPU a run of 64 rows costs ~25% more per row
    than runs of 8 (activations outgrow the cache; measured in BENCHMARKS.md). None: `CPU_SUB_BATCH_ROWS`
    on the CPU provider, the whole call on a GPU; 0: the whole call always.
    """

    def __init__(self, model_dir: str, variant: str = "int8", provider: str = "cpu",
                 intra_op_threads: int | None = None, graph_optimization: str = "all",
                 io_binding: bool = False, device_id: int = 0, sub_batch_rows: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.card = ModelCard.read(model_dir)
        self.card.require_variant(model_dir, variant)
        if self.card.max_length is None:
            raise ValueError(f"{model_dir}/model_card.json: max_length: missing; the scorer needs the truncation length")
        if provider not in PROVIDERS:
            raise ValueError(f"provider {provider!r}: expected one of {sorted(PROVIDERS)}")
        if sub_batch_rows is not None and sub_batch_rows < 0:
            raise ValueError(f"sub_batch_rows={sub_batch_rows}: must be >= 0 (0: the whole call) or None")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads={intra_op_threads}: must be >= 1 or None")
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if graph_optimization not in levels:
            raise ValueError(f"graph_optimization {graph_optimization!r}: expected one of {sorted(levels)}")

        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[graph_optimization]
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        # One request at a time per session: extra inter-op threads only contend for the cores.
        opts.inter_op_num_threads = 1
        self.model_path = self.card.variant_path(model_dir, variant)
        if device_id < 0:
            raise ValueError(f"device_id={device_id}: must be >= 0")
        self.session = ort.InferenceSession(
            self.model_path, sess_options=opts, providers=PROVIDERS[provider],
            provider_options=provider_options(provider, device_id, model_dir, variant, self.card.max_length,
                                              list(self.card.inputs)))
        self.providers: list[str] = list(self.session.get_providers())
        required = _REQUIRED.get(provider)
        if required is not None and required not in self.providers:
            raise RuntimeError(
                f"provider={provider!r} requested but ONNX Runtime started with {self.providers} "
                "(no usable CUDA: check the GPU, CUDA/cuDNN libraries and onnxruntime-gpu); refusing to run on CPU silently"
            )
        self.io_binding = bool(io_binding)
        self.device_id = device_id
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.card.output
        self.max_length = self.card.max_length
        self.name: str = self.card.name
        self.version: str = self.card.version
        self.variant = variant
        self.provider = provider
        if sub_batch_rows is None:
            sub_batch_rows = CPU_SUB_BATCH_ROWS if provider == "cpu" else 0
        self.sub_batch_rows = sub_batch_rows

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Feeds for the session: int64 arrays (batch, longest-in-batch ≤ max_length)."""
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="np")
        return {n: (enc[n] if n in enc else np.zeros_like(enc["input_ids"])).astype(np.int64) for n in self.input_names}

    def logits(self, texts: list[str]) -> np.ndarray:
        """Click logits, float64 (n,)."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got one string")
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}]: expected a string, got {type(t).__name__}")
        return self.logits_of_ids(self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"])

    def logits_of_ids(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Click logits, float64 (n,), of token-id sequences (at least one): sorted by length and run
        `sub_batch_rows` at a time, each run padded to its own longest (attention mask 0 on the
        padding, token types 0), returned in input order."""
        n = len(seqs)
        step = self.sub_batch_rows or n
        order = sorted(range(n), key=lambda i: len(seqs[i]))
        pad = self.tokenizer.pad_token_id or 0
        parts = []
        for start in range(0, n, step):
            rows = order[start:start + step]
            width = max(len(seqs[i]) for i in rows)
            ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                ids[r, : len(seqs[i])] = seqs[i]
                mask[r, : len(seqs[i])] = 1
            known = {"input_ids": ids, "attention_mask": mask}
            feeds = {name: known.get(name, np.zeros_like(ids)) for name in self.input_names}
            if self.io_binding:
                parts.append(np.asarray(self._run_bound(feeds)))
            else:
                parts.append(np.asarray(self.session.run([self.output_name], feeds)[0]))
        out = np.empty(n, dtype=np.float64)
        out[order] = np.concatenate(parts).reshape(n, -1)[:, 0]
        return out

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One run through ORT's I/O binding: host feeds bound (copied to the device once, at bind
        time), the output allocated on the provider's device and copied back after the run."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        device = "cpu" if self.provider == "cpu" else "cuda"
        binding.bind_output(self.output_name, device, self.device_id if device == "cuda" else 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities, float64 (n,) in [0, 1]."""
        return sigmoid(self.logits(texts))

    def predict_rows(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities for ad-log rows (dicts), rendered with `to_text`; float64 (n,)."""
        return self.predict(list(rows))

    def predict(self, inputs: Sequence[str | Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities `(n,)` of row texts (`to_text` strings) and row dicts, mixed, in one call:
        what one serving batch holds when `/predict` texts and a bid's candidate rows share it."""
        from distillery.data.text import to_text  # pyarrow-backed schema: only the row path needs it

        return self.predict_proba([x if isinstance(x, str) else to_text(check_row(i, x)) for i, x in enumerate(inputs)])

    def __repr__(self) -> str:
        return (f"OnnxScorer(name={self.name!r}, version={self.version!r}, variant={self.variant!r}, "
                f"providers={self.providers}, io_binding={self.io_binding})")
