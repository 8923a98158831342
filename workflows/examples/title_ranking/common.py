"""What every title_ranking version shares: facts, request handling and the top-k ranking.

Facts (`facts.safetensors`): title embeddings and popularity (row i = title id i + 1), and
per user (rows found through hashed user ids) the last viewed titles and finished titles,
both -1 padded. An unknown user is a cold start (empty history). Country / device one-hots
use the vocabularies in params (unknown values in the `other` bucket). A version's
`workflow.py` subclasses `TitleRankingBase` with its model: `request_rows` builds one
request's model input in `preprocess`, `score_batch` scores every candidate of a batch;
`postprocess` drops finished titles and returns the top k by score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from shardline.workflows.manifest import WorkflowManifest
from shardline.workflows.sdk import (
    Array,
    ContextLike,
    Inputs,
    KeyIndex,
    Outputs,
    Workflow,
    context_one_hot,
    get_ids,
    get_int,
    row_ids,
    top_k,
    unique_in_order,
)

FACTS_FILE = "facts.safetensors"


@dataclass(frozen=True)
class Prepared:
    candidates: Array  # int64 title ids, unique, request order
    rows: Array  # float32 model input of the request (see `TitleRankingBase.request_rows`)
    finished: Array  # int64 title ids to drop
    k: int


@dataclass(frozen=True)
class Scored:
    prepared: Prepared
    scores: Array  # float32 [len(candidates)]


class TitleRankingBase(Workflow):
    """Ranks `candidates` for the request's user; outputs `title_ids` and `scores`.

    Subclasses set `setup_model`, `request_rows`, `score_batch` and the `EXAMPLE_*`
    values."""

    EXAMPLE_COUNTRY: ClassVar[str]
    EXAMPLE_DEVICE: ClassVar[str]

    def __init__(
        self,
        manifest: WorkflowManifest,
        weights: dict[str, torch.Tensor],
        package_dir: Path,
        device: torch.device,
    ) -> None:
        super().__init__(manifest, weights, package_dir, device)
        facts = self.load_data(FACTS_FILE)
        self.embedding = facts["title_embedding"].astype(np.float32)
        self.n_titles = len(self.embedding)
        popularity = facts["title_popularity"].astype(np.float64) * self.n_titles
        self.log_popularity = np.log(popularity).astype(np.float32)
        self.users = KeyIndex(facts["user_keys"])
        self.history = facts["user_history"]
        self.finished = facts["user_finished"]
        self.vocabularies = {
            "country": self.param_strings("countries"),
            "device": self.param_strings("devices"),
        }
        self.top_k = self.param("top_k", int)
        self.max_k = self.param("max_k", int)
        self.max_candidates = self.param("max_candidates", int)
        self.n_context = sum(len(v) for v in self.vocabularies.values())
        self.setup_model(weights)

    def setup_model(self, weights: dict[str, torch.Tensor]) -> None:
        """Build the model from `weights` (on `self.device`); runs at the end of `__init__`."""
        raise NotImplementedError

    def request_rows(self, history: Array, context: Array, candidates: Array) -> Array:
        """One request's model input from its user's `history` (title ids, empty = cold
        start), the country / device one-hots `context` and the `candidates`."""
        raise NotImplementedError

    def score_batch(self, batch: list[Prepared]) -> list[Array]:
        """Scores of every request's candidates (one array per request, batch order)."""
        raise NotImplementedError

    def preprocess(self, context: ContextLike, inputs: Inputs) -> Prepared:
        candidates = get_ids(inputs, "candidates", 1, self.n_titles, self.max_candidates)
        k = get_int(inputs, "k", default=self.top_k, low=1, high=self.max_k)
        history = row_ids(self.users, self.history, context.user_id)
        rows = self.request_rows(history, context_one_hot(context, self.vocabularies), candidates)
        finished = row_ids(self.users, self.finished, context.user_id)
        return Prepared(candidates=candidates, rows=rows, finished=finished, k=k)

    def forward(self, batch: list[Any]) -> list[Any]:
        if not batch:
            return []
        parts = self.score_batch(batch)
        return [Scored(p, s) for p, s in zip(batch, parts, strict=True)]

    def postprocess(self, context: ContextLike, inputs: Inputs, raw: Any) -> Outputs:
        p = raw.prepared
        ids, scores = top_k(p.candidates, raw.scores, p.k, exclude=p.finished)
        return {"title_ids": ids, "scores": scores}

    def example_request(self) -> tuple[dict[str, str], dict[str, Array]]:
        """`params.example_user_id` (a known user) with finished titles among the candidates."""
        user_id = str(self.params.get("example_user_id", "anonymous"))
        finished = row_ids(self.users, self.finished, user_id)
        others = np.arange(1, 41, dtype=np.int64)
        candidates = unique_in_order(np.concatenate([finished, others]))
        context = {
            "user_id": user_id,
            "country": self.EXAMPLE_COUNTRY,
            "device": self.EXAMPLE_DEVICE,
            "surface": "home",
        }
        return context, {"candidates": candidates, "k": np.array(10, dtype=np.int64)}
