"""Model faults are the server's: NaN scores and ONNX Runtime errors from real ONNX graphs are told
apart from the request's faults, never priced as bids, never written as invalid JSON; the scoring
health trips after failures in a row or a hung call. Ray-free (the HTTP side: tests/integration/
test_model_faults_http.py); both build their models with `tinymodels.save_graph_model`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from tinymodels import GRAPHS, save_graph_model

from distillery.onnx_model.kinds import open_scorer
from distillery.serving.batcher import ThreadBatcher
from distillery.serving.bidder import NoBidReason, decide_bids, plan_bids
from distillery.serving.catalog import load_catalog
from distillery.serving.metrics_health import (EveryN, HealthSection, ModelFault, ScoringHealth, check_probs,
                                               model_fault)
from distillery.serving.oip import InferCall, infer_response

TEXT = "query: running shoes | site: sports | ad: Marathon-ready footwear | ad category: sports"


@pytest.fixture(scope="module")
def scorers(tiny_bert, tmp_path_factory):
    base = tmp_path_factory.mktemp("graphs")
    return {g: open_scorer(str(save_graph_model(base / g, tiny_bert, g, f"{g}-1")), "int8", intra_op_threads=1)
            for g in GRAPHS}


def _rows() -> list[dict]:
    return [ad.row_fields() for ad in load_catalog().candidates()][:4]


def test_nan_logits_are_a_non_finite_model_fault(scorers):
    probs = scorers["nan"].predict([TEXT, *_rows()])
    assert np.isnan(probs).all()
    fault = check_probs(probs, "nan-1")
    assert isinstance(fault, ModelFault) and fault.kind == "non_finite" and fault.version == "nan-1"
    assert "NaN" in fault.message and "5 of 5" in fault.message
    assert check_probs(scorers["finite"].predict([TEXT, *_rows()])) is None
    for bad in ([0.5, np.inf], [0.5, 1.5], [-0.1]):
        assert check_probs(np.array(bad)).kind == "non_finite"


def test_an_onnx_runtime_error_is_the_models_fault_and_a_bad_input_the_requests(scorers):
    with pytest.raises(Exception) as raised:
        scorers["ort_error"].predict([TEXT])
    fault = model_fault(raised.value, "ort_error-1")
    assert fault is not None and fault.kind == "runtime_error" and fault.version == "ort_error-1"
    assert type(raised.value).__name__ in fault.message
    with pytest.raises(TypeError) as bad_input:  # a row that is not a dict: the request's fault (422)
        scorers["finite"].predict([TEXT, 42])
    assert model_fault(bad_input.value) is None
    assert model_fault(fault) is fault


def test_nan_probabilities_are_never_priced_as_a_bid():
    catalog = load_catalog()
    size = next(s for ad in catalog.candidates() for s in ad.creative.sizes)
    w, h = map(int, size.split("x"))
    request = {"id": "r1", "imp": [{"id": "1", "bidfloor": 0.01, "banner": {"w": w, "h": h}}],
               "site": {"domain": "news.example"}}
    plan = plan_bids(request, catalog)
    assert plan.candidates
    probs = np.full(len(plan.candidates), np.nan)  # NaN passes every floor comparison
    with pytest.raises(ModelFault) as refused:
        decide_bids(plan, probs, model_version="nan-1")
    assert refused.value.kind == "non_finite"
    assert NoBidReason.TECHNICAL_ERROR == 1  # OpenRTB 2.6 list 5.24: technical error
    response, _ = decide_bids(plan, np.full(len(plan.candidates), 0.5), model_version="ok")
    assert response is not None and response["seatbid"]


def test_infer_response_refuses_nan_instead_of_writing_invalid_json():
    call = InferCall(texts=["a", "b"], shape=[2], request_id=None, binary_output=False)
    with pytest.raises(ValueError):
        infer_response(call, np.array([0.5, np.nan]), "ctr", "v1")
    body, _ = infer_response(call, np.array([0.5, 0.25]), "ctr", "v1")
    assert json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))["outputs"][0]["data"] == [0.5, 0.25]


def test_failed_batches_in_a_row_make_the_replica_unhealthy_and_a_success_resets():
    health = ScoringHealth(HealthSection(max_consecutive_failures=3), busy_s=lambda: 0.0)
    for _ in range(2):
        health.batch(failed=True)
    assert health.problem() is None
    health.batch(failed=False)
    for _ in range(2):
        health.batch(failed=True)
    assert health.problem() is None  # the success reset the count
    health.batch(failed=True)
    assert "3 scoring batches in a row" in health.problem()
    assert "max_consecutive_failures=3" in health.problem()
    health.batch(failed=False)
    assert health.problem() is None


def test_a_hung_scoring_call_makes_the_replica_unhealthy():
    """A real scoring thread whose call blocks: `busy_s` grows past `max_scoring_s`, then clears."""
    release = threading.Event()

    def score(items):
        release.wait(10)
        return [len(x) for x in items]

    batcher = ThreadBatcher(score, max_rows=8)
    health = ScoringHealth(HealthSection(max_scoring_s=0.2), busy_s=lambda: batcher.busy_s)

    async def run() -> tuple[str | None, int]:
        task = asyncio.ensure_future(batcher.submit(["x", "y"]))
        await asyncio.sleep(0.4)
        hung = health.problem()
        release.set()
        return hung, await task

    try:
        assert batcher.busy_s == 0.0
        hung, result = asyncio.run(run())
        assert hung is not None and "hung" in hung and "max_scoring_s=0.2" in hung
        assert result == 2
        deadline = time.monotonic() + 5
        while batcher.busy_s and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.busy_s == 0.0 and health.problem() is None
    finally:
        release.set()
        batcher.close()


def test_health_settings_name_the_field():
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        HealthSection(max_consecutive_failures=0)
    with pytest.raises(ValueError, match="max_scoring_s"):
        HealthSection(max_scoring_s=0)
    with pytest.raises(ValueError, match="extra"):
        HealthSection.model_validate({"max_failures": 3})


def test_every_n_logs_the_first_and_then_once_per_n():
    every = EveryN(3)
    assert [every() for _ in range(7)] == [True, False, False, True, False, False, True]
