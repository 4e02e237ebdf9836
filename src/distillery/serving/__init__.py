"""Online serving: the Ray-free scorer and bidder, and the Ray Serve app around them.

    scorer.py      OnnxScorer: ONNX Runtime session + tokenizer + to_text (Ray-free)
    catalog.py     campaigns and creatives the bidder can buy for (demo_catalog.yaml ships)
    bidder.py      OpenRTB 2.5/2.6: eligibility, one scoring batch per request, auction
    oip.py         Open Inference Protocol (KServe V2) payloads, JSON and binary tensors
    predict.py     /predict bodies (rows or texts)
    limits.py      edge guards: body size, UTF-8, JSON depth, bearer token
    app.py         AppArgs, build_app (serve run / serve deploy / RayService), `distillery serve`
    deployment.py  the Serve deployment (FastAPI ingress, @serve.batch, hot swap)
    metrics.py     replica metrics beside Serve's own

Submodules are imported directly; importing this package pulls in neither Ray nor ONNX Runtime.
"""
