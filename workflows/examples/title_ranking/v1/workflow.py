"""title_ranking@1: ranks a user's candidate titles with an MLP over per-candidate features.

Facts (`facts.safetensors`): title embeddings and popularity (row i = title id i + 1), and
per user (rows found through hashed user ids) the last viewed titles and finished titles,
both -1 padded. An unknown user is a cold start (empty history). Per candidate the features
are: title embedding, the user's profile (mean embedding of the history), their product and
dot product, log popularity, a cold-start flag and country / device one-hots (vocabularies in
params, unknown values in the `other` bucket). `forward` scores every candidate of the batch
in one MLP call; `postprocess` drops finished titles and returns the top k by score.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    KeyIndex,
    Outputs,
    Workflow,
    concat_rows,
    context_one_hot,
    get_ids,
    get_int,
    load_module,
    mean_embedding,
    mlp,
    row_ids,
    split_rows,
    to_numpy,
    top_k,
    unique_in_order,
)

FACTS_FILE = "facts.safetensors"
HIDDEN = (64, 32)


def n_features(embed_dim: int, n_context: int) -> int:
    return 3 * embed_dim + 3 + n_context


def candidate_features(
    embedding: Array, log_popularity: Array, history: Array, context: Array, candidates: Array
) -> Array:
    """Feature rows [len(candidates), n_features] for one request. `history` holds title
    ids (empty = cold start), `context` the country and device one-hots."""
    profile = mean_embedding(embedding, history - 1)
    emb = embedding[candidates - 1]
    n = candidates.size
    return np.concatenate(
        [
            emb,
            np.broadcast_to(profile, emb.shape),
            emb * profile,
            (emb @ profile)[:, None],
            log_popularity[candidates - 1][:, None],
            np.full((n, 1), 1.0 if history.size == 0 else 0.0, dtype=np.float32),
            np.broadcast_to(context, (n, context.size)),
        ],
        axis=1,
        dtype=np.float32,
    )


def build_model(n_in: int) -> nn.Sequential:
    return mlp([n_in, *HIDDEN, 1])


@dataclass(frozen=True)
class Prepared:
    candidates: Array  # int64 title ids, unique, request order
    features: Array  # float32 [len(candidates), n_features]
    finished: Array  # int title ids to drop
    k: int


@dataclass(frozen=True)
class Scored:
    prepared: Prepared
    scores: Array  # float32 [len(candidates)]


class TitleRankingWorkflow(Workflow):
    """Ranks `candidates` for the request's user; outputs `title_ids` and `scores`."""

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
        n_context = sum(len(v) for v in self.vocabularies.values())
        n_in = n_features(self.embedding.shape[1], n_context)
        self.model = load_module(build_model(n_in), weights, "model.", device)

    def preprocess(self, context: ContextLike, inputs: Inputs) -> Prepared:
        candidates = get_ids(inputs, "candidates", 1, self.n_titles, self.max_candidates)
        k = get_int(inputs, "k", default=self.top_k, low=1, high=self.max_k)
        history = row_ids(self.users, self.history, context.user_id)
        features = candidate_features(
            self.embedding,
            self.log_popularity,
            history,
            context_one_hot(context, self.vocabularies),
            candidates,
        )
        finished = row_ids(self.users, self.finished, context.user_id)
        return Prepared(candidates=candidates, features=features, finished=finished, k=k)

    def forward(self, batch: list[Any]) -> list[Any]:
        if not batch:
            return []
        rows, sizes = concat_rows([p.features for p in batch])
        scores = to_numpy(self.model(self.to_device(rows)).squeeze(-1))
        return [Scored(p, s) for p, s in zip(batch, split_rows(scores, sizes), strict=True)]

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
        context = {"user_id": user_id, "country": "US", "device": "tv", "surface": "home"}
        return context, {"candidates": candidates, "k": np.array(10, dtype=np.int64)}
