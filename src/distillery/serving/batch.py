"""One batch's scoring (`serving.batcher`), with each request's failure kept to itself. Ray-free."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["score_batch"]


Input = str | Mapping[str, Any]  # a row text, or a row (a bid candidate)


def score_batch(predict: Callable[[list[Input]], np.ndarray],
                items: list[list[Input]]) -> list[np.ndarray | Exception]:
    """Probabilities for each item (a request's inputs) of a batch, in one `predict` call.

    If that call raises, every item is scored alone, so one input the model or tokenizer cannot
    take fails only its own request: its slot holds the exception, the others their (n,) arrays.
    Never raises.
    """
    inputs = [x for item in items for x in item]
    try:
        probs = np.asarray(predict(inputs))
    except Exception as err:  # noqa: BLE001 - isolated below, per item
        if len(items) == 1:
            return [err]
        out: list[np.ndarray | Exception] = []
        for item in items:
            try:
                out.append(np.asarray(predict(item)))
            except Exception as err:  # noqa: BLE001 - this item's own answer
                out.append(err)
        return out
    out, start = [], 0
    for item in items:
        out.append(probs[start:start + len(item)])
        start += len(item)
    return out
