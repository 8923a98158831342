"""title_ranking@2: two-tower ranker; score = user vector · title vector.

Same facts, inputs and outputs as title_ranking@1 (shared in `title_ranking.common`). The
user tower reads the user's profile (mean embedding of the viewing history; an unknown user
is a cold start), a cold-start flag and country / device one-hots; the item tower reads a
title's embedding and log popularity. Item vectors do not depend on the request, so they are
computed once at load; `forward` runs the user tower once for the whole batch and takes one
gathered dot product for all its candidates. `postprocess` drops finished titles and returns
the top k.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shardline.workflows.examples.title_ranking.common import Prepared, TitleRankingBase
from shardline.workflows.sdk import Array, load_module, mean_embedding, mlp, split_rows, to_numpy

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


class TwoTowerWorkflow(TitleRankingBase):
    """Two-tower ranker; one prepared item's `rows` are its user-tower input."""

    EXAMPLE_COUNTRY = "BR"
    EXAMPLE_DEVICE = "mobile"

    def setup_model(self, weights: dict[str, torch.Tensor]) -> None:
        items = item_features(self.embedding, self.log_popularity)
        model = TwoTower(self.embedding.shape[1] + 1 + self.n_context, items.shape[1])
        self.model = load_module(model, weights, "model.", self.device)
        with torch.no_grad():
            self.item_vectors: torch.Tensor = self.model.item_tower(self.to_device(items))

    def request_rows(self, history: Array, context: Array, candidates: Array) -> Array:
        return user_features(self.embedding, history, context)

    def score_batch(self, batch: list[Prepared]) -> list[Array]:
        sizes = [p.candidates.size for p in batch]
        user_vectors = self.model.user_tower(self.to_device(np.stack([p.rows for p in batch])))
        owner = torch.repeat_interleave(
            torch.arange(len(batch), device=self.device),
            torch.tensor(sizes, device=self.device),
        )
        index = self.to_device(np.concatenate([p.candidates for p in batch]) - 1)
        scores = (user_vectors[owner] * self.item_vectors[index]).sum(dim=-1)
        return split_rows(to_numpy(scores), sizes)
