"""payment_fraud@2: a wider two-hidden-layer MLP with engineered interaction features.

Same interface as payment_fraud@1. Features: those of v1 (log amount, country mismatch, log
account age, transactions in the last 24 h, card present, currency one-hot with an `other`
bucket) plus card-not-present interactions (log amount * not present, mismatch * not
present) and transaction velocity (log(1 + tx_last_24h), tx per month of account age),
standardized with the mean/std in the weights file; Platt-calibrated (`calib.a`, `calib.b`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from shardline.workflows.examples.payment_fraud.common import FraudWorkflowBase
from shardline.workflows.sdk import Array, mlp, vocab_index

HIDDEN = (64, 64)
NUMERIC = (
    "log_amount",
    "country_mismatch",
    "log_account_age",
    "tx_last_24h",
    "card_present",
    "log_amount_not_present",
    "mismatch_not_present",
    "log_tx_last_24h",
    "tx_per_account_month",
)


def features(columns: Mapping[str, Any], currencies: Sequence[str]) -> Array:
    """Raw feature rows [n, len(NUMERIC) + len(currencies)] of transaction columns."""
    n = len(columns["amount"])
    cur = np.zeros((n, len(currencies)), dtype=np.float32)
    cur[np.arange(n), [vocab_index(currencies, str(c)) for c in columns["currency"]]] = 1.0
    log_amount = np.log1p(np.asarray(columns["amount"], dtype=np.float64))
    mismatch = np.asarray(columns["country_mismatch"], dtype=np.float64)
    age = np.asarray(columns["account_age_days"], dtype=np.float64)
    tx = np.asarray(columns["tx_last_24h"], dtype=np.float64)
    absent = 1.0 - np.asarray(columns["card_present"], dtype=np.float64)
    numeric = np.stack(
        [
            log_amount,
            mismatch,
            np.log1p(age),
            tx,
            1.0 - absent,
            log_amount * absent,
            mismatch * absent,
            np.log1p(tx),
            tx / (1.0 + age / 30.0),
        ],
        axis=1,
    )
    return np.concatenate([numeric.astype(np.float32), cur], axis=1)


def build_model(n_features: int) -> nn.Sequential:
    return mlp([n_features, *HIDDEN, 1])


class FraudWorkflow(FraudWorkflowBase):
    """payment_fraud@2: the shared fraud workflow with this version's features and model."""

    NUMERIC = NUMERIC
    EXAMPLE_COUNTRY = "GB"
    EXAMPLE_DEVICE = "mobile"
    EXAMPLE_AMOUNT = 980.5
    EXAMPLE_CURRENCY = "GBP"
    features = staticmethod(features)
    build_model = staticmethod(build_model)
