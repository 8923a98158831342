"""payment_fraud@1: calibrated fraud probability and decision for one card transaction.

Features: log amount, country mismatch, log account age, transactions in the last 24 h,
card present and a currency one-hot (vocabulary in `params.currencies`, unknown currencies
fall in the `other` bucket), standardized with the mean/std stored in the weights file. A
small MLP scores the batch; Platt scaling (`calib.a`, `calib.b`, fitted on a held-out split)
turns logits into probabilities; `params.threshold` / `params.review_threshold` decide.
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
        context = {"user_id": "u00042", "country": "US", "device": "web", "surface": "checkout"}
        inputs = {
            "amount": np.array(249.99, dtype=np.float32),
            "currency": np.array("EUR"),
            "country_mismatch": np.array(True),
            "account_age_days": np.array(12.0, dtype=np.float32),
            "tx_last_24h": np.array(4, dtype=np.int64),
            "card_present": np.array(False),
        }
        return context, inputs
