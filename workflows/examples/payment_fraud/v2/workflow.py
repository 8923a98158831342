"""payment_fraud@2: a wider two-hidden-layer MLP with engineered interaction features.

Same interface as payment_fraud@1. Features: those of v1 (log amount, country mismatch, log
account age, transactions in the last 24 h, card present, currency one-hot with an `other`
bucket) plus card-not-present interactions (log amount * not present, mismatch * not
present) and transaction velocity (log(1 + tx_last_24h), tx per month of account age),
standardized with the mean/std in the weights file; Platt-calibrated (`calib.a`, `calib.b`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workflows.manifest import WorkflowManifest
from workflows.sdk import (
    Array,
    ContextLike,
    Inputs,
    Outputs,
    Workflow,
    band,
    get_bool,
    get_float,
    get_int,
    get_str,
    load_module,
    mlp,
    platt,
    standardize,
    to_numpy,
    vocab_index,
)

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


def transaction_columns(inputs: Inputs, max_amount: float) -> dict[str, Any]:
    """One validated request as single-row columns (raises `InputError` naming the field)."""
    return {
        "amount": [get_float(inputs, "amount", 0.0, max_amount)],
        "currency": [get_str(inputs, "currency").strip().upper()],
        "country_mismatch": [get_bool(inputs, "country_mismatch")],
        "account_age_days": [get_float(inputs, "account_age_days", 0.0, 36_500.0)],
        "tx_last_24h": [get_int(inputs, "tx_last_24h", low=0, high=100_000)],
        "card_present": [get_bool(inputs, "card_present")],
    }


class FraudWorkflow(Workflow):
    """Scores card transactions; one preprocessed item is a standardized feature row."""

    def __init__(
        self,
        manifest: WorkflowManifest,
        weights: dict[str, torch.Tensor],
        package_dir: Path,
        device: torch.device,
    ) -> None:
        super().__init__(manifest, weights, package_dir, device)
        self.currencies = self.param_strings("currencies")
        if "other" not in self.currencies:
            raise ValueError("params.currencies must include the 'other' bucket")
        self.threshold = self.param("threshold", float)
        self.review_threshold = self.param("review_threshold", float)
        if not 0.0 <= self.review_threshold <= self.threshold <= 1.0:
            raise ValueError("need 0 <= params.review_threshold <= params.threshold <= 1")
        self.max_amount = self.param("max_amount", float)
        n_features = len(NUMERIC) + len(self.currencies)
        self.mean = to_numpy(weights["norm.mean"]).astype(np.float32)
        self.std = to_numpy(weights["norm.std"]).astype(np.float32)
        if self.mean.shape != (n_features,) or self.std.shape != (n_features,):
            raise ValueError(f"norm.mean/norm.std must have shape [{n_features}]")
        self.model = load_module(build_model(n_features), weights, "model.", device)
        self.calib_a = float(weights["calib.a"].item())
        self.calib_b = float(weights["calib.b"].item())

    def preprocess(self, context: ContextLike, inputs: Inputs) -> dict[str, list[Any]]:
        """Check one transaction's values; feature rows are built for the whole batch."""
        return transaction_columns(inputs, self.max_amount)

    def forward(self, batch: list[Any]) -> list[Any]:
        if not batch:
            return []
        columns = {key: [v for row in batch for v in row[key]] for key in batch[0]}
        rows = standardize(features(columns, self.currencies), self.mean, self.std)
        logits = self.model(self.to_device(rows)).squeeze(-1)
        return [float(p) for p in to_numpy(platt(logits, self.calib_a, self.calib_b))]

    def postprocess(self, context: ContextLike, inputs: Inputs, raw: Any) -> Outputs:
        probability = float(raw)
        bands = ((self.threshold, "decline"), (self.review_threshold, "review"))
        return {
            "probability": np.array(probability, dtype=np.float32),
            "decision": np.array(band(probability, bands, "approve")),
        }

    def example_request(self) -> tuple[dict[str, str], dict[str, Array]]:
        context = {"user_id": "u00042", "country": "GB", "device": "mobile", "surface": "checkout"}
        inputs = {
            "amount": np.array(980.5, dtype=np.float32),
            "currency": np.array("GBP"),
            "country_mismatch": np.array(True),
            "account_age_days": np.array(12.0, dtype=np.float32),
            "tx_last_24h": np.array(4, dtype=np.int64),
            "card_present": np.array(False),
        }
        return context, inputs
