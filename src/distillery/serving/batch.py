"""One `@serve.batch` call's scoring, with each request's failure kept to itself. Ray-free."""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["score_batch"]


def score_batch(predict_proba: Callable[[list[str]], np.ndarray],
                items: list[list[str]]) -> list[np.ndarray | Exception]:
    """Probabilities for each item (a request's texts) of a batch, in one `predict_proba` call.

    If that call raises, every item is scored alone, so one input the model or tokenizer cannot
    take fails only its own request: its slot holds the exception, the others their (n,) arrays.
    Never raises.
    """
    texts = [t for texts in items for t in texts]
    try:
        probs = np.asarray(predict_proba(texts))
    except Exception as err:  # noqa: BLE001 - isolated below, per item
        if len(items) == 1:
            return [err]
        out: list[np.ndarray | Exception] = []
        for item in items:
            try:
                out.append(np.asarray(predict_proba(item)))
            except Exception as err:  # noqa: BLE001 - this item's own answer
                out.append(err)
        return out
    out, start = [], 0
    for item in items:
        out.append(probs[start:start + len(item)])
        start += len(item)
    return out
