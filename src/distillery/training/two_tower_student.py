"""The two-tower student: a request tower, an ad tower and a small interaction head, one click logit.

    model, tokenizer = build_two_tower(ModelInit(kind="two_tower", source="minilm", layers=[0, 5]))
    rows = TwoTowerRows(tokenizer, texts, max_length=64, spec=model.spec)      # dataset for the loop
    logits = model(**collate_two_tower([rows[i] for i in range(8)]))           # (8,)

Why: a cross-encoder reads request and ad together, so a bid with n candidates costs n transformer
passes. Here the request text (query/page and context) and the ad text are encoded apart by one
shared transformer (a MiniLM layer subset, mean-pooled like sentence-transformers, so it starts from
the similarity the two-tower teacher is built on). A bid then costs one request-tower pass, cached
ad embeddings (computed when the catalog loads) and the head per candidate:

    ũ = √d · normalise(mean_pool(encoder(request)))     (batch, d)
    ṽ = √d · normalise(mean_pool(encoder(ad)))          (batch, d)
    x = [ũ, ṽ, ũ⊙ṽ, cos(ũ, ṽ), E_pos[position], E_slot[slot], Σ_f E_cat[h_f]]
    logit = o · relu(W x + b) + o_b + s · x              (batch,)

Position, slot size and `head_categorical` columns are per-candidate features of the head, not
tower text. A tower's hashed categoricals (`request_categorical`, `ad_categorical`: ids with no
meaning as text) add a learned vector before the normalisation, `ũ = √d · normalise(t + P Σ_f
E[h_f])` with t the unit text embedding (0 for a tower without text, which never runs the
transformer); P starts at zero where the tower has text, so the start is the text's cosine. With
`ModelInit.head_from` (a two-tower teacher folder) the head starts as the teacher's own click head
over the student's cosine (`start_head_from_teacher`; Ray Train workers then standardise the
student's own cosine on training rows, `start_head_on_rows`): the skip path holds the teacher's
cosine and position weights and its intercept, the MLP branch starts at zero (`o = 0`), so the
untrained student already scores like the teacher, up to the difference between the towers'
cosines. The inputs of both
towers are recovered from the canonical row text (`from_text`), so every stage that hands a
cross-encoder `to_text(row)` hands this student the same string. A published folder holds the
tokenizer, `two_tower_student.json` (spec + encoder config) and `two_tower_student.pt` (weights,
loaded with `weights_only=True`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from distillery.data.text import from_text
from distillery.data.tower_inputs import TwoTowerSpec, head_bucket, tower_inputs, tower_inputs_from_fields

__all__ = ["KIND", "CONFIG_FILE", "WEIGHTS_FILE", "HEAD_FROM_CLICKS", "TwoTowerSpec", "TwoTowerStudent", "InteractionHead", "CategoricalTower",
           "TwoTowerRows", "collate_two_tower", "tower_inputs", "tower_inputs_from_fields", "build_two_tower",
           "load_two_tower", "is_two_tower_student", "mean_pool", "start_head_from_teacher",
           "start_head_on_rows"]

log = logging.getLogger(__name__)

KIND = "two_tower"
CONFIG_FILE = "two_tower_student.json"
WEIGHTS_FILE = "two_tower_student.pt"
HEAD_FROM_CLICKS = "clicks"  # `ModelInit.head_from`: fit the head's start on the training rows' clicks (no teacher)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden: (batch, seq, d)` over the tokens `mask: (batch, seq)` marks; `(batch, d)`."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class CategoricalTower(torch.nn.Module):
    """A tower's hashed categoricals: `forward(cats: (b, F) int64) -> (b, d)` = P · Σ_f E[cats[:, f]] (row 0: missing, zero)."""

    def __init__(self, spec: TwoTowerSpec, dim: int, with_text: bool):
        super().__init__()
        self.table = torch.nn.Embedding(spec.hash_buckets, spec.hash_dim, padding_idx=0)
        self.proj = torch.nn.Linear(spec.hash_dim, dim, bias=False)
        if with_text:  # start at the text's cosine; training moves P off zero (E's gradient flows through P's)
            torch.nn.init.zeros_(self.proj.weight)

    def forward(self, cats: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(cats).sum(1))


class InteractionHead(torch.nn.Module):
    """One logit per (request, ad, position, slot, head categoricals):
    `forward(u: (b, d), v: (b, d), position: (b,), slot: (b,), cats: (b, F) | None) -> (b,)`."""

    def __init__(self, dim: int, spec: TwoTowerSpec):
        super().__init__()
        n_in = 3 * dim + 1 + (3 if spec.head_categorical else 2) * spec.feature_dim
        self.dim = dim
        self.position = torch.nn.Embedding(spec.position_buckets, spec.feature_dim)
        self.slot = torch.nn.Embedding(spec.slot_buckets, spec.feature_dim)
        self.cats = torch.nn.Embedding(spec.hash_buckets, spec.feature_dim, padding_idx=0) if spec.head_categorical else None
        self.dense = torch.nn.Linear(n_in, spec.head_hidden)
        self.skip = torch.nn.Linear(n_in, 1, bias=False)  # a linear path: the cosine alone is a useful start
        self.out = torch.nn.Linear(spec.head_hidden, 1)  # last one-logit Linear: `set_output_bias` sets its bias
        with torch.no_grad():
            self.skip.weight.zero_()
            self.position.weight.mul_(0.1)
            self.slot.weight.mul_(0.1)
            if self.cats is not None:
                self.cats.weight.mul_(0.1)

    def features(self, u: torch.Tensor, v: torch.Tensor, position: torch.Tensor, slot: torch.Tensor,
                 cats: torch.Tensor | None = None) -> torch.Tensor:
        cos = (u * v).sum(-1, keepdim=True) / self.dim  # ũ, ṽ have norm √d
        parts = [u, v, u * v, cos, self.position(position), self.slot(slot)]
        if self.cats is not None:
            parts.append(self.cats(cats).sum(1))
        return torch.cat(parts, dim=-1)

    def forward(self, u, v, position, slot, cats=None) -> torch.Tensor:
        x = self.features(u, v, position, slot, cats)
        return (self.out(torch.relu(self.dense(x))) + self.skip(x)).squeeze(-1)


class TwoTowerStudent(torch.nn.Module):
    """Shared transformer towers + `InteractionHead`. `forward(**batch)` returns `SimpleNamespace(logits=(b, 1))`."""

    student_kind = KIND

    def __init__(self, encoder, spec: TwoTowerSpec):
        super().__init__()
        self.spec = spec
        self.encoder = encoder  # an HF base model (BertModel, ...): last_hidden_state (b, seq, d)
        d = int(encoder.config.hidden_size)
        self.classifier = InteractionHead(d, spec)
        self.request_cats = CategoricalTower(spec, d, spec.has_text("request")) if spec.request_categorical else None
        self.ad_cats = CategoricalTower(spec, d, spec.has_text("ad")) if spec.ad_categorical else None

    @property
    def config(self):
        return self.encoder.config

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value) -> None:
        self.encoder.set_input_embeddings(value)

    def _text_unit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mean-pooled text embedding, unit norm, `(batch, d)`."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One tower pass over text (the exported graph): `(batch, seq)` int64 ids and mask → `(batch, d)` float, norm √d."""
        return self._text_unit(input_ids, attention_mask) * math.sqrt(self.config.hidden_size)

    def tower(self, side: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              cats: torch.Tensor | None = None) -> torch.Tensor:
        """The `side` ("request" or "ad") tower's vector `(batch, d)`, norm √d: text and hashed categoricals."""
        table = self.request_cats if side == "request" else self.ad_cats
        if table is None:
            return self.embed(input_ids, attention_mask)
        x = table(cats)
        if self.spec.has_text(side):
            x = x + self._text_unit(input_ids, attention_mask)
        return torch.nn.functional.normalize(x, dim=-1) * math.sqrt(self.config.hidden_size)

    def forward(self, request_input_ids, request_attention_mask, ad_input_ids, ad_attention_mask, position, slot,
                request_cat=None, ad_cat=None, head_cat=None):
        u = self.tower("request", request_input_ids, request_attention_mask, request_cat)
        v = self.tower("ad", ad_input_ids, ad_attention_mask, ad_cat)
        return SimpleNamespace(logits=self.classifier(u, v, position, slot, head_cat).unsqueeze(-1))

    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        meta = {"kind": KIND, "format": 1, "spec": self.spec.model_dump(mode="json"), "encoder_config": self.encoder.config.to_dict()}
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, os.path.join(path, WEIGHTS_FILE))


def is_two_tower_student(folder: str) -> bool:
    """True for a folder written by `TwoTowerStudent.save_pretrained` (local path or URI)."""
    from distillery import io

    return io.exists(io.join(folder, CONFIG_FILE))


def load_two_tower(path: str):
    """(model in eval mode, tokenizer) from a local folder written by `save_pretrained` + tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not a two-tower student folder)")
    with open(cfg_path) as f:
        meta = json.load(f)
    if meta.get("kind") != KIND:
        raise ValueError(f"{cfg_path}: kind {meta.get('kind')!r}, expected {KIND!r}")
    enc_cfg = dict(meta["encoder_config"])
    config = AutoConfig.for_model(enc_cfg.pop("model_type"), **enc_cfg)
    try:  # eager attention: exports cleanly to ONNX, same numbers as sdpa
        encoder = AutoModel.from_config(config, attn_implementation="eager", add_pooling_layer=False)
    except TypeError:  # families without a pooler argument
        encoder = AutoModel.from_config(config, attn_implementation="eager")
    model = TwoTowerStudent(encoder, TwoTowerSpec.model_validate(meta["spec"]))
    state = torch.load(os.path.join(path, WEIGHTS_FILE), weights_only=True)
    model.load_state_dict(state)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def build_two_tower(init) -> tuple[TwoTowerStudent, Any]:
    """(model, tokenizer) from `ModelInit(kind="two_tower")`: the source's encoder, cut to `init.layers`
    (all layers when empty), and a fresh head seeded by `init.seed`."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from distillery.models import resolve_model_path
    from distillery.training.init import keep_layers

    source = resolve_model_path(init.source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a classifier folder as source: its head keys are unused here, by design
    try:
        encoder = AutoModel.from_pretrained(source, add_pooling_layer=False)
    except TypeError:  # families without a pooler argument
        encoder = AutoModel.from_pretrained(source)
    finally:
        hf_logging.set_verbosity(level)
    if init.layers:
        keep_layers(encoder, init.layers)
    torch.manual_seed(init.seed)
    model = TwoTowerStudent(encoder, init.two_tower)
    if init.head_from and init.head_from != HEAD_FROM_CLICKS:  # clicks: the training rows decide (start_head_on_rows)
        from distillery.teachers.two_tower import TwoTowerHead

        start = start_head_from_teacher(model.classifier, TwoTowerHead.load(init.head_from, "init.head_from"), init.two_tower)
        log.info("two-tower student head from the teacher at %s: %s", init.head_from, start)
    log.info("two-tower student from %s layers %s: %.1fM parameters", source, init.layers,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, tokenizer


def start_head_from_teacher(head: InteractionHead, teacher, spec: TwoTowerSpec,
                            cosine_moments: tuple[float, float] | None = None) -> dict[str, Any]:
    """Set `head` (in place) to the two-tower teacher's click head over the student's own features.

    The teacher (`teachers.two_tower.TwoTowerHead`) scores `b + Σ_i w_i (x_i − m_i) / s_i` over
    x = [cosine, one-hot categorical levels]. The student's skip path gets the same function:

        logit = c + (w_cos / s_cos) · cos(ũ, ṽ) + E_pos[bucket(position)]₀ + E_slot[bucket(slot)]₀
        c = b − Σ_i w_i m_i / s_i              (over the features the head reads)

    with column 0 of the position/slot embeddings holding `w_l / s_l` per level's bucket (0 for the
    reference level and unknown values, as in the teacher) and a skip weight of 1 on it; the
    `head_categorical` columns share one table the same way (column 0 of Σ_f E_cat[h_f] sums their
    levels' weights, as the teacher's one-hots do); the MLP branch's output weights start at zero,
    so it adds nothing until training moves it. Teacher categorical fields that are not head
    features have no place in the head: their terms are left out (each has mean 0 over the
    teacher's training rows).

    `cosine_moments` = (mean, std) of the *student's* cosine on training rows replaces the teacher's
    (m_cos, s_cos): a cut tower's cosine has another mean and spread than the full encoder's (layers
    [0, 5] of MiniLM-L6: std 0.085 against 0.147), and the head's few weights move by ~lr per step,
    too little to rescale it in training; standardising the student's own cosine keeps the teacher's
    logit spread and mean. Returns what was set, for the log.
    """
    d, fd = head.dim, spec.feature_dim
    cos_at = 3 * d
    names, w = teacher.feature_names, np.asarray(teacher.weights, dtype=np.float64)
    mean, std = np.array(teacher.mean, dtype=np.float64), np.array(teacher.std, dtype=np.float64)
    if cosine_moments is not None:
        mean[0], std[0] = cosine_moments[0], max(cosine_moments[1], 1e-6)
    scaled = w / std
    # table name -> (embedding, column of x where its block starts); head categoricals share one table
    blocks = {"position": (head.position, 3 * d + 1), "slot_size": (head.slot, 3 * d + 1 + fd)}
    if head.cats is not None:
        blocks["_cats"] = (head.cats, 3 * d + 1 + 2 * fd)
    table_of = {"position": "position", "slot_size": "slot_size", **{f: "_cats" for f in spec.head_categorical}}
    levels: dict[str, dict[int, list[float]]] = {name: {} for name in blocks}
    constant = float(teacher.intercept) - scaled[0] * mean[0]
    dropped = set()
    for i, name in enumerate(names[1:], start=1):
        field, _, level = name.partition("=")
        if field not in table_of:
            dropped.add(field)
            continue
        constant -= scaled[i] * mean[i]
        levels[table_of[field]].setdefault(head_bucket(field, level, spec), []).append(float(scaled[i]))
    with torch.no_grad():
        head.skip.weight.zero_()
        head.skip.weight[0, cos_at] = float(scaled[0])
        for name, (embedding, at) in blocks.items():
            table = embedding.weight
            table[:, 0] = 0.0
            for bucket, values in levels[name].items():  # levels clipped or hashed into one bucket share their mean
                table[bucket, 0] = float(np.mean(values))
            head.skip.weight[0, at] = 1.0 if levels[name] else 0.0
        head.out.weight.zero_()
        head.out.bias.fill_(constant)
    if dropped:
        log.warning("init.head_from: teacher categorical fields %s have no place in the student's head; left out", sorted(dropped))
    return {"cosine_weight": round(float(scaled[0]), 4), "cosine_mean": round(float(mean[0]), 4), "constant": round(float(constant), 4),
            "position_levels": len(levels["position"]), "slot_levels": len(levels["slot_size"]),
            "categorical_levels": len(levels.get("_cats", {})), "dropped": sorted(dropped)}


def start_head_on_rows(model: TwoTowerStudent, tokenizer, head_from: str, table, max_length: int,
                       rows: int = 1024, batch_size: int = 128) -> dict[str, Any]:
    """The head's start from training rows (`training.data.TrainingTable`; Ray Train workers given the
    same table start alike), over the student's own cosine:

    - `head_from` a teacher folder: `start_head_from_teacher` with the cosine standardised on up to
      `rows` training rows (evenly spaced);
    - `head_from` "clicks": the teacher's form (L2 logistic regression over the standardised cosine
      and one-hots of position and the head categoricals' levels seen on ≥ 20 rows, `fit_logistic`)
      fitted on the training rows' clicks instead: the click-only twin's start, with no teacher in it.
    """
    from distillery.teachers.two_tower import TwoTowerHead

    train = table.subset(~table.is_val)
    if head_from == HEAD_FROM_CLICKS:
        train = train.subset(np.isfinite(train.click))
        picked = np.arange(len(train))
    else:
        picked = np.unique(np.linspace(0, len(train) - 1, min(rows, len(train))).astype(int)) if len(train) else []
    texts = [train.texts[i] for i in picked]
    if not texts:
        raise ValueError(f"init.head_from={head_from!r}: no training rows to start the head on")
    cos = _cosines(model, tokenizer, texts, max_length, batch_size)
    if head_from != HEAD_FROM_CLICKS:
        teacher = TwoTowerHead.load(head_from, "init.head_from")
        return start_head_from_teacher(model.classifier, teacher, model.spec, (float(cos.mean()), float(cos.std())))
    from distillery.training.two_tower_teacher import fit_logistic

    fields = [from_text(t, extras=True) for t in texts]
    levels: dict[str, list[str]] = {}
    for name in ("position", *model.spec.head_categorical):
        counts: dict[str, int] = {}
        for f in fields:
            if f.get(name) is not None:
                counts[f[name]] = counts.get(f[name], 0) + 1
        reference = max(counts, key=lambda v: (counts[v], v), default=None)  # the most common level: weight 0
        levels[name] = sorted(v for v in counts if v != reference and counts[v] >= 20)
    head = TwoTowerHead(encoder="student", request_fields=model.spec.request_fields, ad_fields=model.spec.ad_fields,
                        levels=levels, mean=[], std=[], weights=[], intercept=0.0)
    x = head.features(cos, fields)
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-12] = 1.0
    w, b = fit_logistic((x - mean) / std, train.click[picked], l2=1.0)
    head.mean, head.std, head.weights, head.intercept = mean.tolist(), std.tolist(), w.tolist(), b
    return {**start_head_from_teacher(model.classifier, head, model.spec), "fitted_on_clicks": int(train.click[picked].sum())}


def _cosines(model: TwoTowerStudent, tokenizer, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """cos(ũ, ṽ) of each text's towers, `(len(texts),)` float64, in eval mode (no dropout)."""
    data = TwoTowerRows(tokenizer, texts, max_length, model.spec)
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = collate_two_tower([data[i] for i in range(start, min(start + batch_size, len(data)))])
            u = model.tower("request", batch["request_input_ids"], batch["request_attention_mask"], batch.get("request_cat"))
            v = model.tower("ad", batch["ad_input_ids"], batch["ad_attention_mask"], batch.get("ad_cat"))
            out.append(((u * v).sum(-1) / u.shape[-1]).double().numpy())
    model.train(was_training)
    return np.concatenate(out)


class TwoTowerRows(Dataset):
    """Rows tokenised once per tower; items carry both towers' ids, the head features and float targets."""

    def __init__(self, tokenizer, texts: list[str], max_length: int, spec: TwoTowerSpec,
                 target=None, teacher_prob=None, click=None):
        parts = [tower_inputs(t, spec) for t in texts]
        n = len(parts)
        kw = dict(truncation=True, max_length=max_length, padding=False)
        # a tower without text never runs the encoder: its ids are [CLS] [SEP], never read
        self.request_ids = tokenizer([p.request for p in parts], **kw)["input_ids"] if n else []
        self.ad_ids = tokenizer([p.ad for p in parts], **kw)["input_ids"] if n else []
        self.position = np.array([p.position for p in parts], dtype=np.int64)
        self.slot = np.array([p.slot for p in parts], dtype=np.int64)
        # hashed categoricals (n, F) int64, only for the lists the spec has: collate passes what exists
        self.cats = {key: np.array([getattr(p, attr) for p in parts], dtype=np.int64).reshape(n, len(names))
                     for key, attr, names in (("request_cat", "request_cats", spec.request_categorical),
                                              ("ad_cat", "ad_cats", spec.ad_categorical),
                                              ("head_cat", "head_cats", spec.head_categorical)) if names}
        nan = np.full(n, np.nan, dtype=np.float32)
        self.target = nan if target is None else np.asarray(target, dtype=np.float32)
        self.teacher_prob = nan if teacher_prob is None else np.asarray(teacher_prob, dtype=np.float32)
        self.click = nan if click is None else np.asarray(click, dtype=np.float32)
        self.pad_id = tokenizer.pad_token_id or 0
        self.collate = collate_two_tower

    @classmethod
    def from_table(cls, tokenizer, table, max_length: int, spec: TwoTowerSpec) -> "TwoTowerRows":
        return cls(tokenizer, table.texts, max_length, spec, table.target, table.teacher_prob, table.click)

    def __len__(self) -> int:
        return len(self.position)

    def length_keys(self) -> np.ndarray:
        """`(n,)` int64: ad-tower tokens (the longer tower), then request tokens: equal keys pad alike."""
        ad = np.fromiter((len(x) for x in self.ad_ids), dtype=np.int64, count=len(self.ad_ids))
        req = np.fromiter((len(x) for x in self.request_ids), dtype=np.int64, count=len(self.request_ids))
        return ad * (int(req.max(initial=0)) + 1) + req

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"request": self.request_ids[i], "ad": self.ad_ids[i], "position": self.position[i], "slot": self.slot[i],
                **{k: v[i] for k, v in self.cats.items()},
                "target": self.target[i], "teacher_prob": self.teacher_prob[i], "click": self.click[i], "pad_id": self.pad_id}


def _pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def collate_two_tower(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Model inputs `request_/ad_input_ids, _attention_mask: (batch, seq)`, `position, slot: (batch,)` int64,
    `request_cat, ad_cat, head_cat: (batch, F)` int64 where the spec has them, and targets `(batch,)`
    float32 — the keys `TwoTowerStudent.forward` and `compute_loss` read."""
    pad = items[0]["pad_id"]
    req_ids, req_mask = _pad([it["request"] for it in items], pad)
    ad_ids, ad_mask = _pad([it["ad"] for it in items], pad)
    out = {"request_input_ids": req_ids, "request_attention_mask": req_mask, "ad_input_ids": ad_ids,
           "ad_attention_mask": ad_mask, "position": torch.tensor([int(it["position"]) for it in items]),
           "slot": torch.tensor([int(it["slot"]) for it in items])}
    for key in ("request_cat", "ad_cat", "head_cat"):
        if key in items[0]:
            out[key] = torch.from_numpy(np.stack([it[key] for it in items]))
    for key in ("target", "teacher_prob", "click"):
        out[key] = torch.tensor([it[key] for it in items], dtype=torch.float32)
    return out
