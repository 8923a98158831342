"""title_ranking@1: ranks a user's candidate titles with an MLP over per-candidate features.

Facts, request handling and the top-k ranking are shared (`title_ranking.common`). Per
candidate the features are: title embedding, the user's profile (mean embedding of the
history), their product and dot product, log popularity, a cold-start flag and country /
device one-hots (vocabularies in params, unknown values in the `other` bucket). `forward`
scores every candidate of the batch in one MLP call; `postprocess` drops finished titles and
returns the top k by score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shardline.workflows.examples.title_ranking.common import Prepared, TitleRankingBase
from shardline.workflows.sdk import (
    Array,
    concat_rows,
    load_module,
    mean_embedding,
    mlp,
    split_rows,
    to_numpy,
)

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


class TitleRankingWorkflow(TitleRankingBase):
    """Per-candidate MLP; one prepared item's `rows` are its candidates' feature rows."""

    EXAMPLE_COUNTRY = "US"
    EXAMPLE_DEVICE = "tv"

    def setup_model(self, weights: dict[str, torch.Tensor]) -> None:
        n_in = n_features(self.embedding.shape[1], self.n_context)
        self.model = load_module(build_model(n_in), weights, "model.", self.device)

    def request_rows(self, history: Array, context: Array, candidates: Array) -> Array:
        return candidate_features(self.embedding, self.log_popularity, history, context, candidates)

    def score_batch(self, batch: list[Prepared]) -> list[Array]:
        rows, sizes = concat_rows([p.rows for p in batch])
        return split_rows(to_numpy(self.model(self.to_device(rows)).squeeze(-1)), sizes)
