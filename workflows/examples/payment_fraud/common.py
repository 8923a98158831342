"""What every payment_fraud version shares: request validation, scoring, calibration, decision.

A version's `workflow.py` supplies only what differs: its feature names (`NUMERIC`), its
`features` function, its `build_model` and its example request, as a small subclass of
`FraudWorkflowBase`. Per batch the base class builds the feature rows with the version's
`features`, standardizes them with `norm.mean` / `norm.std` from the weights file, scores
them with the MLP, turns logits into probabilities with Platt scaling (`calib.a`, `calib.b`)
and decides with `params.threshold` / `params.review_threshold`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from shardline.workflows.manifest import WorkflowManifest
from shardline.workflows.sdk import (
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
    platt,
    standardize,
    to_numpy,
)


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


class FraudWorkflowBase(Workflow):
    """Scores card transactions; one preprocessed item is one request's validated columns.

    Subclasses set `NUMERIC`, `features`, `build_model` and the `EXAMPLE_*` values."""

    NUMERIC: ClassVar[tuple[str, ...]]
    EXAMPLE_COUNTRY: ClassVar[str]
    EXAMPLE_DEVICE: ClassVar[str]
    EXAMPLE_AMOUNT: ClassVar[float]
    EXAMPLE_CURRENCY: ClassVar[str]

    @staticmethod
    def features(columns: Mapping[str, Any], currencies: Sequence[str]) -> Array:
        """Raw feature rows [n, len(NUMERIC) + len(currencies)] of transaction columns."""
        raise NotImplementedError

    @staticmethod
    def build_model(n_features: int) -> nn.Module:
        """The untrained scoring model: feature rows -> one logit per row."""
        raise NotImplementedError

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
        n_features = len(self.NUMERIC) + len(self.currencies)
        self.mean = to_numpy(weights["norm.mean"]).astype(np.float32)
        self.std = to_numpy(weights["norm.std"]).astype(np.float32)
        if self.mean.shape != (n_features,) or self.std.shape != (n_features,):
            raise ValueError(f"norm.mean/norm.std must have shape [{n_features}]")
        self.model = load_module(self.build_model(n_features), weights, "model.", device)
        self.calib_a = float(weights["calib.a"].item())
        self.calib_b = float(weights["calib.b"].item())

    def preprocess(self, context: ContextLike, inputs: Inputs) -> dict[str, list[Any]]:
        """Check one transaction's values; feature rows are built for the whole batch."""
        return transaction_columns(inputs, self.max_amount)

    def forward(self, batch: list[Any]) -> list[Any]:
        if not batch:
            return []
        columns = {key: [v for row in batch for v in row[key]] for key in batch[0]}
        rows = standardize(self.features(columns, self.currencies), self.mean, self.std)
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
        context = {
            "user_id": "u00042",
            "country": self.EXAMPLE_COUNTRY,
            "device": self.EXAMPLE_DEVICE,
            "surface": "checkout",
        }
        inputs = {
            "amount": np.array(self.EXAMPLE_AMOUNT, dtype=np.float32),
            "currency": np.array(self.EXAMPLE_CURRENCY),
            "country_mismatch": np.array(True),
            "account_age_days": np.array(12.0, dtype=np.float32),
            "tx_last_24h": np.array(4, dtype=np.int64),
            "card_present": np.array(False),
        }
        return context, inputs
