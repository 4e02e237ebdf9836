"""Online serving: the Ray-free bidder and request handling, and the Ray Serve app around them.
The model a replica runs (its card, OnnxScorer, TwoTowerScorer) lives below, in `distillery.onnx_model`.

    config.py      the Serve YAML (load_serve_config), AppArgs and its sections, model_root checks
    catalog.py     campaigns and creatives the bidder can buy for (demo_catalog.yaml ships)
    bidder.py      OpenRTB 2.5/2.6: eligibility, one scoring batch per request, auction
    oip.py         Open Inference Protocol (KServe V2) payloads, JSON and binary tensors
    predict.py     /predict bodies (rows or texts)
    limits.py      edge guards: body size, UTF-8, JSON depth, bearer token
    batch.py       one batch scored, a bad input failing only its own request
    batcher.py     the scoring thread: dynamic batching of queued requests, up to a batch of rows
    app.py         build_app (serve run / serve deploy / RayService), `distillery serve`
    deployment.py  the Serve deployment (FastAPI ingress, the scoring thread, hot swap)
    metrics.py     replica metrics beside Serve's own

Submodules are imported directly; importing this package pulls in neither Ray nor ONNX Runtime.
"""
