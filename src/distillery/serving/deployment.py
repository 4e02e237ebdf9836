"""The Serve deployment: FastAPI routes over one batched ONNX Runtime scorer per replica.

Routes (all JSON; errors are `{"error": "..."}` with a 4xx status naming the problem):

    GET  /healthz, /v2/health/live, /v2/health/ready         no auth (model details only with the token)
    POST /predict                                              rows or texts -> probabilities
    GET  /v2 | /v2/models/{m}[/versions/{v}][/ready]           OIP metadata and readiness
    POST /v2/models/{m}[/versions/{v}]/infer                   OIP infer (JSON or binary tensors)
    POST /openrtb/2.5/bid, /openrtb/2.6/bid                    bid response, or 200 no-bid with `nbr`, in tmax

A model fault (NaN or infinite scores, an ONNX Runtime error: `serving.metrics_health`) is the
server's: 503 `{"error": ...}` on /predict and OIP infer, a no-bid with nbr 1 on OpenRTB, counted by
kind; `health.max_consecutive_failures` failed batches in a row, or one scoring call past
`health.max_scoring_s`, make `check_health` raise so Serve replaces the replica. A hot swap to a
model that loads but cannot score a fixed set of catalog rows (the canary) is refused like one
that does not load. A client gone mid-body is counted, not logged as an error; a bid's body must
arrive within the configured bid deadline (408 otherwise).

Every scored row goes through `_score` (`serving.batcher`: one scoring thread that takes the queued
requests, up to a batch of rows, the moment it is free), so the candidates of one bid request and
rows of concurrent requests share ONNX Runtime calls; an input the model cannot take fails only its
own request. Bodies are read as streams and refused past the size limit;
large ones are parsed, and bid requests planned, on worker threads, off the event loop. Every
scored response carries the model version that scored it (`x-model-version`, and in the body).
"""


import asyncio
import gc
import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from distillery.onnx_model.kinds import kind_of_card, open_scorer
from distillery.serving import oip
from distillery.serving.arrival import arrival_time
from distillery.serving.batch import score_batch
from distillery.serving.batcher import ThreadBatcher
from distillery.serving.bidder import (BidPlan, BidRequestError, NoBid, NoBidReason, decide_bids,
                                      deadline_budget_ms, no_bid_response, plan_bids)
from distillery.serving.catalog import load_catalog
from distillery.serving.config import (DEPLOYMENT_NAME, AppArgs, ModelSection, auth_required,
                                       decorator_options, load_serve_config, missing_token_message, resolve_model_dir)
from distillery.serving.limits import (BadRequest, check_bearer, check_content_length, is_authorized, load_token,
                                       parse_json_body, read_body)
from distillery.serving.metrics import ServingMetrics
from distillery.serving.metrics_health import (EveryN, ModelFault, ScoringHealth, check_probs,
                                               model_fault)
from distillery.serving.predict import predict_texts

log = logging.getLogger("ray.serve")
api = FastAPI(title="distillery", docs_url=None, redoc_url=None, openapi_url=None)


class _AsciiJSON(JSONResponse):
    """JSON with non-ASCII escaped: a lone surrogate echoed from a request (an id, a quoted field)
    stays valid JSON instead of failing the response's UTF-8 encoding (a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return _AsciiJSON({"error": message}, status_code=status, headers=headers)


def _reasons(no_bid: dict[str, NoBid]) -> str:
    """`imp id: why; ...`, the `x-no-bid-reason` text."""
    return "; ".join(f"{imp_id}: {why}" for imp_id, why in no_bid.items())


def _count_rejected(request: Request, status: int) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        path = request.url.path
        route = next((r for r in ("predict", "v2", "openrtb") if path.startswith(f"/{r}")), "other")
        metrics.rejected(route, status)


@api.exception_handler(BadRequest)
async def _bad_request(request: Request, err: BadRequest) -> JSONResponse:
    _count_rejected(request, err.status)
    return _error(err.status, err.message, err.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    _count_rejected(request, err.status_code)
    return _error(err.status_code, str(err.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    _count_rejected(request, 400)
    return _error(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))


class _ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody reads the answer."""


@api.exception_handler(ModelFault)
async def _model_fault(request: Request, fault: ModelFault) -> JSONResponse:
    """503: the model failed, the request was fine; another replica (or this one after a fix) may answer it."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.model_fault(fault.kind)
    headers = {"retry-after": "1", **({"x-model-version": fault.version} if fault.version else {})}
    return _error(503, f"model fault ({fault.kind}): {fault.message}; the request itself was fine", headers)


@api.exception_handler(_ClientGone)
async def _client_gone(request: Request, err: _ClientGone) -> Response:
    # 499 (nginx's "client closed request"): an answer for the access log only, no error logged
    return Response(status_code=499)


@api.exception_handler(Exception)
async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return _error(500, f"internal error ({type(err).__name__}); the replica keeps serving")


_OFFLOAD_BYTES = 64_000  # bodies above this are parsed on a worker thread, not the event loop
_CANARY_ROWS = 16  # catalog rows a newly loaded model must score before a hot swap switches to it
_CANARY_TEXT = "query: running shoes | site: sports | ad: Marathon-ready footwear | ad category: sports"
_LOG_EVERY = 100  # frequent, expected events (client disconnects, model faults) are logged once per this many


def _proxy_host() -> str | None:
    """The address Serve's HTTP proxy binds (the controller's http_options), None if unknown."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:  # noqa: BLE001 - unknown counts as exposed (auth fails closed)
        return None


class _LastGood:
    """The last model that loaded on any replica of this app, kept in Ray's GCS key-value store so a
    replica that starts after a failed swap serves it too (not the model the app booted with)."""

    def __init__(self, args: AppArgs):
        from ray import serve

        scope = json.dumps({"root": args.model_root, "model": args.model.model_dump()}, sort_keys=True)
        app = serve.get_replica_context().app_name
        self.key = f"distillery/{app}/{DEPLOYMENT_NAME}/{hashlib.sha1(scope.encode()).hexdigest()[:12]}".encode()

    def get(self) -> ModelSection | None:
        from ray.experimental import internal_kv

        try:
            raw = internal_kv._internal_kv_get(self.key, namespace="distillery")
            return ModelSection.model_validate_json(raw) if raw else None
        except Exception as err:  # noqa: BLE001 - no record: the replica keeps the model it has
            log.warning("last good model unreadable (%s): keeping the model loaded at start", err)
            return None

    def put(self, model: ModelSection) -> None:
        from ray.experimental import internal_kv

        try:
            internal_kv._internal_kv_put(self.key, model.model_dump_json(), overwrite=True, namespace="distillery")
        except Exception as err:  # noqa: BLE001 - a later replica falls back to the start model
            log.warning("could not record the last good model: %s", err)


# Defaults from the shipped serve/serve_config.yaml (its CTRServer entry); a deploy's own config overrides them.
_SHIPPED = load_serve_config()


def _one_blas_thread() -> None:
    """Numpy's BLAS on one thread in this replica, however it was started. The two-tower head is a
    numpy product per bid; with OpenBLAS's default of a thread per core, its idle threads spin-wait
    between calls: a replica answering sequential bids used 1.7 cores for ~2.6 ms of work per bid
    and pushed the client, HAProxy and Ray off the other core (measured on 2 cores). The serve
    config's `OMP_NUM_THREADS: 1` does the same where Serve applies the app's runtime_env
    (`serve deploy`); `distillery serve` and the pipeline bind the app in process, where it does not."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _fault_or(result: np.ndarray | Exception, version: str) -> np.ndarray | Exception:
    """One request's scoring result as the batch returns it, a model fault made a `ModelFault`: an
    exception not about the input (`model_fault`), or probabilities NaN, infinite or outside [0, 1]."""
    if isinstance(result, Exception):
        return model_fault(result, version) or result
    return check_probs(result, version) or result


def _freeze_long_lived() -> None:
    """Move what the replica holds for good (Ray, FastAPI, the model, the catalog: ~250k objects) out
    of the cyclic collector's sight (`gc.freeze`). Otherwise every gen-2 collection walks them all: a
    70 ms pause measured in a bid's path at 1,024 candidates (9 ms max once frozen). Called at start and
    after a hot swap (unfreeze, collect the old model's cycles, freeze again)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@serve.deployment(name=DEPLOYMENT_NAME, **decorator_options(_SHIPPED))
@serve.ingress(api)
class CTRServer:
    """One replica: scorer, catalog, limits; `reconfigure` hot-swaps the model from `user_config`."""

    def __init__(self, args: dict[str, Any]):
        """`args`: AppArgs (its `health` section decides when `check_health` fails)."""
        self.args = AppArgs.model_validate(args)
        _one_blas_thread()
        self._token = load_token(self.args.auth_token_env)
        if self._token is None and auth_required(self.args.auth, host := _proxy_host()):
            raise RuntimeError(missing_token_message(self.args.auth_token_env, host))  # fail closed
        self._catalog = load_catalog(self.args.bidder.catalog)
        self._metrics = ServingMetrics()
        api.state.metrics = self._metrics  # one replica per process: the error handlers count here
        self._scorer = self._load(self.args.model)
        self._model = self.args.model
        # The hot-swap canary: catalog rows the replica warms anyway, plus one text (an empty catalog).
        self._canary_inputs: list[str | dict] = [ad.row_fields() for ad in self._catalog.candidates()][:_CANARY_ROWS]
        self._canary_inputs.append(_CANARY_TEXT)
        self._disconnects_logged = EveryN(_LOG_EVERY)
        self._faults_logged = EveryN(_LOG_EVERY)
        self._last_good = _LastGood(self.args)
        self._configured: dict[str, Any] | None = None  # the user_config Serve last handed us
        self._swap_error: str | None = None  # why the configured model is not the one served
        # One ORT call at a time, on the batcher's thread: the event loop keeps answering (and
        # timing out bids) while a batch computes.
        self._batcher = ThreadBatcher(self._score_items, max_rows=self._batch_rows(),
                                      wait_s=self.args.batch.batch_wait_timeout_ms / 1000.0, name="ort",
                                      on_batch=self._metrics.batch)
        self._health = ScoringHealth(self.args.health, busy_s=lambda: self._batcher.busy_s)
        self._reconfigured = False
        self._metrics.model_loaded(self._scorer.name, self._scorer.version, None)
        self._metrics.swap_failed.set(0)
        _freeze_long_lived()
        log.info("serving %r version %s (%s) on %s, auth %s", self._scorer.name, self._scorer.version,
                 self._scorer.variant, self._scorer.providers, "on" if self._token else "off")

    def _load(self, model: ModelSection):
        path = resolve_model_dir(self.args.model_root, model.model_dir)
        # A cross-encoder's scorer, or TwoTowerScorer when the card says two_tower. Either raises if
        # provider=cuda and ORT did not really get CUDA: the replica refuses to start.
        scorer = open_scorer(path, variant=self.args.variant(model), provider=self.args.provider,
                             intra_op_threads=self.args.intra_op_threads)
        # Every catalog ad prepared now (start, hot swap), not per bid: the two-tower's ad tower runs on
        # it; a cross-encoder tokenises it once.
        scorer.warm_ads(ad.row_fields() for ad in self._catalog.candidates())
        return scorer

    def _load_checked(self, model: ModelSection):
        """`_load`, then the canary: the new model must score the fixed canary inputs (catalog rows, one
        text) into finite probabilities in [0, 1], or it raises `ModelFault` and is never switched to.
        A model that loads but cannot score would otherwise answer every request with a fault."""
        scorer = self._load(model)
        try:
            probs = np.asarray(scorer.predict(self._canary_inputs), dtype=np.float64).reshape(-1)
        except Exception as err:  # noqa: BLE001 - any failure refuses the swap
            raise ModelFault("canary", f"{model.model_dir} loads but cannot score the canary rows "
                                       f"({type(err).__name__}: {str(err)[:300]})", scorer.version) from None
        if probs.shape[0] != len(self._canary_inputs):
            raise ModelFault("canary", f"{model.model_dir} returned {probs.shape[0]} probabilities for "
                                       f"{len(self._canary_inputs)} canary rows", scorer.version)
        if (fault := check_probs(probs)) is not None:
            raise ModelFault("canary", f"{model.model_dir} fails the canary rows: {fault.message}", scorer.version)
        return scorer

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Hot swap: load the folder named in `user_config` beside the serving one, then switch.

        Never raises, so every replica behaves the same: in-flight batches finish on the model they
        started with; a model that fails to load, or loads but fails the canary (`_load_checked`), is
        counted (`distillery_model_swaps{outcome=failed}`, `distillery_swap_failed` = 1), reported by
        the authenticated /healthz, never recorded as last good, and the last good model keeps serving.
        A replica started after the failure loads that last good model too.
        """
        first, self._reconfigured = not self._reconfigured, True
        self._configured = user_config
        loop = asyncio.get_running_loop()
        try:
            model = ModelSection.model_validate(user_config or {})
            if model != self._model:
                scorer = await loop.run_in_executor(None, self._load_checked, model)  # not the scoring thread
                self._switch(scorer, model)
        except Exception as err:  # noqa: BLE001 - refused, reported, last good model kept
            self._swap_error = f"{type(err).__name__}: {err}"[:500]
            if isinstance(err, ModelFault):
                self._metrics.model_fault(err.kind)
            self._metrics.swap(ok=False)
            self._metrics.swap_failed.set(1)
            log.error("model swap to %r failed, still serving version %s: %s", user_config, self._scorer.version, err)
            good = await loop.run_in_executor(None, self._last_good.get) if first else None
            if good is not None and good != self._model:
                try:
                    self._switch(await loop.run_in_executor(None, self._load_checked, good), good)
                except Exception as again:  # noqa: BLE001 - keep the start model
                    log.error("last good model %r failed to load too: %s", good.model_dir, again)
            return
        self._swap_error = None
        self._metrics.swap_failed.set(0)
        await loop.run_in_executor(None, self._last_good.put, self._model)

    def _batch_rows(self) -> int:
        """Rows per scoring call for the served student (`batch.max_batch_rows` or `two_tower_batch_rows`)."""
        return getattr(self.args.batch, kind_of_card(self._scorer.card).batch_rows_field)

    def _switch(self, scorer, model: ModelSection) -> None:
        old = self._scorer
        self._scorer, self._model = scorer, model
        self._batcher.max_rows = self._batch_rows()
        _freeze_long_lived()
        self._metrics.swap(ok=True)
        self._metrics.model_loaded(scorer.name, scorer.version, old.version)
        log.info("swapped model %s -> %s (%s)", old.version, scorer.version, model.model_dir)

    def check_health(self) -> None:
        """Raises (Serve then replaces this replica) when no model is loaded, the scoring thread
        stopped or hung, or `health.max_consecutive_failures` batches in a row had a model fault."""
        if self._scorer is None or not self._batcher.alive:
            raise RuntimeError("no model loaded or scoring thread stopped")
        if (problem := self._health.problem()) is not None:
            log.error("replica unhealthy, asking Serve to replace it: %s", problem)
            raise RuntimeError(problem)
        # Ray exports a gauge's value once after each set: re-set it so the served version stays visible.
        self._metrics.model_loaded(self._scorer.name, self._scorer.version, None)
        self._metrics.swap_failed.set(1 if self._swap_error else 0)

    def __del__(self) -> None:
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.close()

    # -- scoring ----------------------------------------------------------------------------

    def _score_items(self, items: list[list[str | dict]]) -> list[tuple[np.ndarray | Exception, str]]:
        """On the batcher's thread: one scoring call for every input of the batch's requests —
        `/predict` texts and bid candidate rows alike (`scorer.predict`). An input the model cannot
        take fails only its own request (`score_batch`), never the batch. A model fault (an exception
        that is not about the input, or probabilities NaN or outside [0, 1]) becomes that request's
        `ModelFault`, and the batch counts as failed for the replica's health."""
        scorer = self._scorer  # a swap mid-batch does not split the batch across models
        results = [_fault_or(r, scorer.version) for r in score_batch(scorer.predict, items)]
        self._health.batch(failed=any(isinstance(r, ModelFault) for r in results))
        return [(r, scorer.version) for r in results]

    async def _score(self, inputs: list[str | dict]) -> tuple[np.ndarray | Exception, str]:
        """One request's inputs (at most a batch's rows) scored in the next batch with room: (probs or
        the exception that failed them, the model version)."""
        result = await self._batcher.submit(inputs)
        if not isinstance(result[0], Exception):
            self._metrics.predictions.inc(len(result[0]))
        return result

    async def _score_inputs(self, inputs: list[str | dict]) -> tuple[np.ndarray, str]:
        """Probabilities (n,) float64 of texts or rows, and the model version; large requests are cut to batch size."""
        size = self._batcher.max_rows  # the served kind's rows per call, set at load and swap
        parts = await asyncio.gather(*(self._score(inputs[i:i + size]) for i in range(0, len(inputs), size)))
        if fault := next((p for p, _ in parts if isinstance(p, ModelFault)), None):
            if self._faults_logged():
                log.warning("model fault (%s) on version %s: %s (logged once per %d)", fault.kind, fault.version,
                            fault.message, _LOG_EVERY)
            raise fault  # 503 (`_model_fault`), or no-bid nbr 1 on a bid route
        if failed := next((p for p, _ in parts if isinstance(p, Exception)), None):
            self._metrics.unscorable.inc()
            log.warning("input the model could not score: %s: %s", type(failed).__name__, failed)
            raise BadRequest(422, f"texts: the model could not score this input ({type(failed).__name__}); "
                                  "other requests were not affected")
        versions = sorted({v for _, v in parts})
        return np.concatenate([p for p, _ in parts]), "+".join(versions)

    # -- request edge -----------------------------------------------------------------------

    async def _body(self, request: Request, timeout_s: float | None = None) -> bytes:
        """The raw body, after the bearer token is checked, read as a stream and refused (413) as soon
        as it passes `limits.max_body_bytes`, declared or not (chunked, binary tensors included).
        `timeout_s`: the whole body must arrive within it (a bid's deadline), else 408. A client
        that disconnects mid-body is counted and answered 499 (nobody reads it), not an error."""
        check_bearer(request.headers, self._token)
        check_content_length(request.headers, self.args.limits.max_body_bytes)
        try:
            return await asyncio.wait_for(read_body(request.stream(), self.args.limits.max_body_bytes), timeout_s)
        except ClientDisconnect:
            self._metrics.client_disconnect()
            if self._disconnects_logged():
                log.info("client disconnected before its request body arrived on %s (logged once per %d)",
                         request.url.path, _LOG_EVERY)
            raise _ClientGone() from None
        except asyncio.TimeoutError:
            self._metrics.body_timeout()
            raise BadRequest(408, f"request body not received within the bid deadline of {timeout_s * 1000:.0f} ms",
                             {"connection": "close"}) from None

    async def _off_loop(self, body: bytes, fn, *args):
        """`fn(*args)` on a worker thread when the body is large: parsing 1 MB must not stall the
        replica's event loop (and every other request's deadline)."""
        if len(body) > _OFFLOAD_BYTES:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def _json(self, payload: Any, status: int = 200, version: str | None = None) -> JSONResponse:
        return _AsciiJSON(payload, status_code=status,
                            headers={"x-model-version": version or self._scorer.version})

    # -- health -----------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self, request: Request) -> JSONResponse:
        """Anonymous callers learn only whether the replica serves (`ok`, or `degraded` after a failed
        swap or while scoring fails: `check_health`); with the token: the model, its version, the
        replica, why a swap failed, what makes it unhealthy, and its fault counts."""
        problem = self._health.problem()
        status = "degraded" if self._swap_error or problem else "ok"
        if not is_authorized(request.headers, self._token):
            return JSONResponse({"status": status})
        from ray import serve

        return self._json({"status": status, "model": self._scorer.name, "model_version": self._scorer.version,
                           "model_dir": self._model.model_dir, "configured": self._configured,
                           "swap_error": self._swap_error, "health_problem": problem,
                           "counts": dict(self._metrics.tally),
                           "replica": serve.get_replica_context().replica_id.unique_id})

    @api.get("/v2/health/live")
    async def live(self) -> JSONResponse:
        return JSONResponse({"live": True})

    @api.get("/v2/health/ready")
    async def ready(self) -> JSONResponse:
        return JSONResponse({"ready": self._scorer is not None})

    # -- /predict ---------------------------------------------------------------------------

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        body = await self._body(request)
        texts = await self._off_loop(body, self._predict_texts, body)
        probs, version = await self._score_inputs(texts)
        return self._json({"model": self._scorer.name, "model_version": version,
                           "probabilities": probs.tolist()}, version=version)

    def _predict_texts(self, body: bytes) -> list[str]:
        return predict_texts(parse_json_body(body, self.args.limits), self.args.limits)

    # -- Open Inference Protocol ------------------------------------------------------------

    @api.get("/v2")
    @api.get("/v2/")
    async def server_metadata(self, request: Request) -> JSONResponse:
        await self._body(request)
        return self._json(oip.server_metadata())

    @api.get("/v2/models/{name}")
    @api.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(self, request: Request, name: str, version: str | None = None) -> JSONResponse:
        await self._body(request)
        scorer = self._scorer
        oip.check_model(name, version, scorer.name, scorer.version)
        return self._json(oip.model_metadata(scorer.name, scorer.version), version=scorer.version)

    @api.get("/v2/models/{name}/ready")
    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(self, request: Request, name: str, version: str | None = None) -> JSONResponse:
        await self._body(request)
        scorer = self._scorer
        oip.check_model(name, version, scorer.name, scorer.version)
        return self._json({"name": scorer.name, "ready": True}, version=scorer.version)

    @api.post("/v2/models/{name}/infer")
    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(self, request: Request, name: str, version: str | None = None) -> Response:
        body = await self._body(request)
        oip.check_model(name, version, self._scorer.name, self._scorer.version)
        call = await self._off_loop(body, oip.parse_infer, body, dict(request.headers), self.args.limits)
        probs, used = await self._score_inputs(call.texts)
        payload, headers = oip.infer_response(call, probs, self._scorer.name, used)
        return Response(payload, headers={**headers, "x-model-version": used})

    # -- OpenRTB bidder ---------------------------------------------------------------------

    @api.post("/openrtb/2.5/bid")
    async def bid_25(self, request: Request) -> Response:
        return await self._bid(request, "2.5")

    @api.post("/openrtb/2.6/bid")
    async def bid_26(self, request: Request) -> Response:
        return await self._bid(request, "2.6")

    def _no_bid(self, reason: str, body: dict[str, Any], detail: str, version: str | None = None) -> Response:
        """A reasoned no-bid: 200 with `body` (`bidder.no_bid_response`: `id`, `nbr`, no `seatbid`), the
        reason also in `x-no-bid-reason`; counted by `reason` (no_candidates | floor | deadline)."""
        self._metrics.no_bid(reason)
        response = self._json(body, version=version)
        # Reasons quote request fields (imp ids): keep the header printable ASCII, no CR/LF injection.
        response.headers["x-no-bid-reason"] = "".join(c if " " <= c <= "~" else "?" for c in detail[:200])
        return response

    def _out_of_time(self, plan: BidPlan, detail: str, version: str | None = None) -> Response:
        """No-bid with nbr 15 (tmax spent); impressions lost before scoring keep their own reason in `ext`."""
        self._metrics.deadline_misses.inc()
        late = NoBid(NoBidReason.INSUFFICIENT_AUCTION_TIME, detail)
        no_bid = {imp_id: plan.no_bid.get(imp_id, late) for imp_id in plan.imp_ids}
        body = no_bid_response(plan.request_id, no_bid, NoBidReason.INSUFFICIENT_AUCTION_TIME)
        return self._no_bid("deadline", body, detail, version)

    def _faulted(self, plan: BidPlan, fault: ModelFault) -> Response:
        """No-bid with nbr 1 (technical error) when the model failed: every impression that was to be
        scored gets that reason, those lost before scoring keep theirs; counted as a model fault."""
        self._metrics.model_fault(fault.kind)
        failed = NoBid(NoBidReason.TECHNICAL_ERROR, f"model fault ({fault.kind}): no usable click probability")
        no_bid = {imp_id: plan.no_bid.get(imp_id, failed) for imp_id in plan.imp_ids}
        body = no_bid_response(plan.request_id, no_bid, NoBidReason.TECHNICAL_ERROR)
        return self._no_bid("model_fault", body, f"model fault ({fault.kind})", fault.version)

    def _plan(self, body: bytes) -> tuple[Any, BidPlan]:
        """Parse and plan a bid request (CPU work: a worker thread runs it). The candidates go to the
        model as rows: no text is rendered and re-parsed per candidate (`scorer.predict`)."""
        cfg = self.args.bidder
        bid_request = parse_json_body(body, self.args.limits)
        try:
            plan = plan_bids(bid_request, self._catalog, cfg.max_candidates, cfg.max_impressions)
        except BidRequestError as err:
            raise BadRequest(err.status, f"bid request unusable: {err}") from None
        return bid_request, plan

    async def _bid(self, request: Request, openrtb: str) -> Response:
        # tmax counts from arrival: the proxy's stamp (serving.arrival) when present, so time queued
        # before this handler ran is spent budget; else from now.
        start = arrival_time(request.headers) or time.time()
        cfg = self.args.bidder
        # The body holds tmax, so its read is bounded by the configured deadline (`default_tmax_ms`),
        # counted from when the read starts: a client trickling its body must not hold the replica past
        # any bid's use (408), while a request that merely queued reads its body at once and meets its
        # own tmax below (no-bid, nbr 15).
        body = await self._body(request, timeout_s=cfg.default_tmax_ms / 1000.0)
        bid_request, plan = await asyncio.to_thread(self._plan, body)
        if not plan.candidates:
            return self._no_bid("no_candidates", no_bid_response(plan.request_id, plan.no_bid), _reasons(plan.no_bid))
        budget_s = deadline_budget_ms(bid_request, cfg.default_tmax_ms, cfg.network_margin_ms) / 1000.0
        remaining = budget_s - (time.time() - start)
        if remaining <= 0:
            return self._out_of_time(plan, f"tmax budget {budget_s * 1000:.1f} ms spent before scoring")
        task = asyncio.ensure_future(self._score_inputs([c.row for c in plan.candidates]))
        done, _ = await asyncio.wait({task}, timeout=remaining)
        if not done:
            task.cancel()  # queued rows of a cancelled request are dropped from their batch
            return self._out_of_time(plan, f"scoring did not finish within the {budget_s * 1000:.1f} ms budget")
        try:
            probs, version = task.result()  # an input the model cannot take: 422 (`_score_inputs`)
            # decide_bids refuses NaN too (`ModelFault`), however the probabilities got here
            response, no_bid = decide_bids(plan, probs, model_version=version, openrtb=openrtb)
        except ModelFault as fault:
            return self._faulted(plan, fault)
        if response is None:
            return self._no_bid("floor", no_bid_response(plan.request_id, no_bid), _reasons(no_bid), version)
        return self._json(response, version=version)
