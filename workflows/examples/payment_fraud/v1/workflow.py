"""payment_fraud@1: calibrated fraud probability and decision for one card transaction.

Features: log amount, country mismatch, log account age, transactions in the last 24 h,
card present and a currency one-hot (vocabulary in `params.currencies`, unknown currencies
fall in the `other` bucket), standardized with the mean/std stored in the weights file. A
small MLP scores the batch; Platt scaling (`calib.a`, `calib.b`, fitted on a held-out split)
turns logits into probabilities; `params.threshold` / `params.review_threshold` decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from shardline.workflows.examples.payment_fraud.common import FraudWorkflowBase
from shardline.workflows.sdk import Array, mlp, vocab_index

HIDDEN = 32
NUMERIC = ("log_amount", "country_mismatch", "log_account_age", "tx_last_24h", "card_present")


def features(columns: Mapping[str, Any], currencies: Sequence[str]) -> Array:
    """Raw feature rows [n, len(NUMERIC) + len(currencies)] of transaction columns."""
    n = len(columns["amount"])
    cur = np.zeros((n, len(currencies)), dtype=np.float32)
    cur[np.arange(n), [vocab_index(currencies, str(c)) for c in columns["currency"]]] = 1.0
    numeric = np.stack(
        [
            np.log1p(np.asarray(columns["amount"], dtype=np.float64)),
            np.asarray(columns["country_mismatch"], dtype=np.float64),
            np.log1p(np.asarray(columns["account_age_days"], dtype=np.float64)),
            np.asarray(columns["tx_last_24h"], dtype=np.float64),
            np.asarray(columns["card_present"], dtype=np.float64),
        ],
        axis=1,
    )
    return np.concatenate([numeric.astype(np.float32), cur], axis=1)


def build_model(n_features: int) -> nn.Sequential:
    return mlp([n_features, HIDDEN, 1])


class FraudWorkflow(FraudWorkflowBase):
    """payment_fraud@1: the shared fraud workflow with this version's features and model."""

    NUMERIC = NUMERIC
    EXAMPLE_COUNTRY = "US"
    EXAMPLE_DEVICE = "web"
    EXAMPLE_AMOUNT = 249.99
    EXAMPLE_CURRENCY = "EUR"
    features = staticmethod(features)
    build_model = staticmethod(build_model)
