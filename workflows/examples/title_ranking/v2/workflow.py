"""title_ranking@2: two-tower ranker; score = user vector · title vector.

Same facts, inputs and outputs as title_ranking@1. The user tower reads the user's profile
(mean embedding of the viewing history; an unknown user is a cold start), a cold-start flag
and country / device one-hots; the item tower reads a title's embedding and log popularity.
Item vectors do not depend on the request, so they are computed once at load; `forward`
runs the user tower once for the whole batch and takes one gathered dot product for all its
candidates. `postprocess` drops finished titles and returns the top k.
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
TOWER = (64, 32)


def user_features(embedding: Array, history: Array, context: Array) -> Array:
    """User-tower input: profile, cold-start flag, context one-hots."""
    cold = np.array([1.0 if history.size == 0 else 0.0], dtype=np.float32)
    profile = mean_embedding(embedding, history - 1)
    return np.concatenate([profile, cold, context], dtype=np.float32)


def item_features(embedding: Array, log_popularity: Array) -> Array:
    """Item-tower inputs of every title [n_titles, embed_dim + 1]."""
    return np.concatenate([embedding, log_popularity[:, None]], axis=1, dtype=np.float32)


class TwoTower(nn.Module):
    def __init__(self, n_user: int, n_item: int) -> None:
        super().__init__()
        self.user_tower = mlp([n_user, *TOWER])
        self.item_tower = mlp([n_item, *TOWER])

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, owner: torch.Tensor
    ) -> torch.Tensor:
        """Scores of item rows `items` for users `users[owner]`."""
        user_vectors: torch.Tensor = self.user_tower(users)
        item_vectors: torch.Tensor = self.item_tower(items)
        return (user_vectors[owner] * item_vectors).sum(dim=-1)


@dataclass(frozen=True)
class Prepared:
    candidates: Array  # int64 title ids, unique, request order
    user: Array  # float32 user-tower input
    finished: Array  # int64 title ids to drop
    k: int


@dataclass(frozen=True)
class Scored:
    prepared: Prepared
    scores: Array  # float32 [len(candidates)]


class TwoTowerWorkflow(Workflow):
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
        log_popularity = np.log(popularity).astype(np.float32)
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
        items = item_features(self.embedding, log_popularity)
        n_context = sum(len(v) for v in self.vocabularies.values())
        model = TwoTower(self.embedding.shape[1] + 1 + n_context, items.shape[1])
        self.model = load_module(model, weights, "model.", device)
        with torch.no_grad():
            self.item_vectors: torch.Tensor = self.model.item_tower(self.to_device(items))

    def preprocess(self, context: ContextLike, inputs: Inputs) -> Prepared:
        candidates = get_ids(inputs, "candidates", 1, self.n_titles, self.max_candidates)
        k = get_int(inputs, "k", default=self.top_k, low=1, high=self.max_k)
        history = row_ids(self.users, self.history, context.user_id)
        user = user_features(self.embedding, history, context_one_hot(context, self.vocabularies))
        finished = row_ids(self.users, self.finished, context.user_id)
        return Prepared(candidates=candidates, user=user, finished=finished, k=k)

    def forward(self, batch: list[Any]) -> list[Any]:
        if not batch:
            return []
        sizes = [p.candidates.size for p in batch]
        user_vectors = self.model.user_tower(self.to_device(np.stack([p.user for p in batch])))
        owner = torch.repeat_interleave(
            torch.arange(len(batch), device=self.device),
            torch.tensor(sizes, device=self.device),
        )
        index = self.to_device(np.concatenate([p.candidates for p in batch]) - 1)
        scores = (user_vectors[owner] * self.item_vectors[index]).sum(dim=-1)
        parts = split_rows(to_numpy(scores), sizes)
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
        context = {"user_id": user_id, "country": "BR", "device": "mobile", "surface": "home"}
        return context, {"candidates": candidates, "k": np.array(10, dtype=np.int64)}
