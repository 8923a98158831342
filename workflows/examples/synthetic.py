"""Deterministic synthetic data for the example workflows (numpy `default_rng(seed)` only).

* Titles and users (`title_world`): a catalogue of titles with genre-clustered embeddings
  and a popularity share; users with a hidden taste vector, a home country and device, a
  viewing history (most recent first) and finished titles. A hidden ground-truth affinity
  (taste · title + country/genre + device/genre + popularity) drives every sampled view.
  `ranking_requests` samples labelled (user, context, candidates) rows from it.
* Card transactions (`transactions`): fraud labels drawn from a known ground-truth logit
  (`fraud_logit`) plus noise.

The same seed gives the same data on every run; training and tests depend on that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from shardline.workflows.sdk import hash_ids

Array = npt.NDArray[Any]

COUNTRIES: Final = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "other")
DEVICES: Final = ("tv", "mobile", "web", "other")
CURRENCIES: Final = ("USD", "EUR", "GBP", "BRL", "INR", "JPY", "other")
N_TITLES: Final = 1000
N_USERS: Final = 2000
EMBED_DIM: Final = 16
N_GENRES: Final = 8
HISTORY_LEN: Final = 10
FINISHED_LEN: Final = 8
WORLD_SEED: Final = 7


@dataclass(frozen=True)
class TitleWorld:
    """The catalogue, the users (row i <-> `user_ids[i]`, sorted by hashed id) and the truth."""

    title_embedding: Array  # [N_TITLES, EMBED_DIM] float32; row i is title id i + 1
    title_genre: Array  # [N_TITLES] int64
    title_popularity: Array  # [N_TITLES] float32, sums to 1
    user_ids: tuple[str, ...]
    user_keys: Array  # [N_USERS] int64, strictly increasing stable_hash64(user_id)
    user_taste: Array  # [N_USERS, EMBED_DIM] float64 (hidden)
    user_country: Array  # [N_USERS] int64 index into COUNTRIES
    user_device: Array  # [N_USERS] int64 index into DEVICES
    user_history: Array  # [N_USERS, HISTORY_LEN] int32 title ids, -1 padded
    user_finished: Array  # [N_USERS, FINISHED_LEN] int32 title ids, -1 padded
    country_genre: Array  # [len(COUNTRIES), N_GENRES] (hidden)
    device_genre: Array  # [len(DEVICES), N_GENRES] (hidden)

    def affinity(self, users: Array, countries: Array, devices: Array) -> Array:
        """Ground-truth affinity [len(users), N_TITLES] of users in the given contexts."""
        genre = self.title_genre
        return (
            3.0 * self.user_taste[users] @ self.title_embedding.T.astype(np.float64)
            + self.country_genre[countries][:, genre]
            + self.device_genre[devices][:, genre]
            + 0.7 * np.log(self.title_popularity.astype(np.float64) * N_TITLES)[None, :]
        )

    def facts(self) -> dict[str, Array]:
        """The fact tables a title-ranking package ships (`facts.safetensors`)."""
        return {
            "title_embedding": self.title_embedding,
            "title_popularity": self.title_popularity,
            "user_keys": self.user_keys,
            "user_history": self.user_history,
            "user_finished": self.user_finished,
        }


def _unit(x: Array) -> Array:
    return np.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True))


def _gumbel_top(rng: np.random.Generator, logits: Array, count: int) -> Array:
    """Per row, `count` indices sampled without replacement with probability ∝ exp(logits)."""
    noisy = logits + rng.gumbel(size=logits.shape)
    return np.argsort(-noisy, axis=1, kind="stable")[:, :count]


def title_world(seed: int = WORLD_SEED) -> TitleWorld:
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(N_GENRES, EMBED_DIM))
    genre = rng.integers(0, N_GENRES, size=N_TITLES)
    emb = _unit(centroids[genre] + 0.7 * rng.normal(size=(N_TITLES, EMBED_DIM)))
    pop = rng.lognormal(mean=0.0, sigma=1.0, size=N_TITLES)
    pop = pop / pop.sum()

    raw_ids = [f"u{n:05d}" for n in rng.choice(100_000, size=N_USERS, replace=False)]
    keys = hash_ids(raw_ids)
    order = np.argsort(keys, kind="stable")
    user_ids = tuple(raw_ids[i] for i in order)
    g1 = rng.integers(0, N_GENRES, size=N_USERS)
    g2 = rng.integers(0, N_GENRES, size=N_USERS)
    taste = _unit(centroids[g1] + 0.5 * centroids[g2] + 0.5 * rng.normal(size=(N_USERS, EMBED_DIM)))
    country = rng.choice(len(COUNTRIES), size=N_USERS, p=[0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    device = rng.choice(len(DEVICES), size=N_USERS, p=[0.4, 0.35, 0.2, 0.05])

    world = TitleWorld(
        title_embedding=emb.astype(np.float32),
        title_genre=genre.astype(np.int64),
        title_popularity=pop.astype(np.float32),
        user_ids=user_ids,
        user_keys=keys[order],
        user_taste=taste,
        user_country=country.astype(np.int64),
        user_device=device.astype(np.int64),
        user_history=np.empty(0, dtype=np.int32),
        user_finished=np.empty(0, dtype=np.int32),
        country_genre=rng.normal(scale=0.8, size=(len(COUNTRIES), N_GENRES)),
        device_genre=rng.normal(scale=0.6, size=(len(DEVICES), N_GENRES)),
    )
    users = np.arange(N_USERS)
    viewed = _gumbel_top(rng, world.affinity(users, country, device), HISTORY_LEN) + 1
    lengths = rng.integers(0, HISTORY_LEN + 1, size=N_USERS)
    lengths[rng.random(N_USERS) < 0.05] = 0  # some users have watched nothing yet
    history = np.where(np.arange(HISTORY_LEN)[None, :] < lengths[:, None], viewed, -1)
    n_finished = np.minimum(rng.integers(0, FINISHED_LEN + 1, size=N_USERS), lengths)
    finished = np.full((N_USERS, FINISHED_LEN), -1, dtype=np.int64)
    for u in range(N_USERS):
        picks = rng.permutation(history[u, : lengths[u]])[: n_finished[u]]
        finished[u, : picks.size] = np.sort(picks)
    return replace(
        world, user_history=history.astype(np.int32), user_finished=finished.astype(np.int32)
    )


def ranking_requests(
    world: TitleWorld, seed: int, per_user: int = 4, negatives: int = 4
) -> dict[str, Array]:
    """Labelled ranking rows: for each sampled (user row, country, device) one viewed title
    (label 1, drawn from the true affinity, never already in the history) and `negatives`
    uniform titles (label 0). Candidates are title ids, shape [n, 1 + negatives]."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(N_USERS), per_user)
    n = users.size
    home = rng.random(n) < 0.85
    countries = np.where(home, world.user_country[users], rng.integers(0, len(COUNTRIES), n))
    local = rng.random(n) < 0.7
    devices = np.where(local, world.user_device[users], rng.integers(0, len(DEVICES), n))
    scores = world.affinity(users, countries, devices)
    hist = world.user_history[users]
    rows, cols = np.nonzero(hist >= 0)
    scores[rows, hist[rows, cols] - 1] = -np.inf
    positive = _gumbel_top(rng, scores, 1)[:, 0] + 1
    negative = rng.integers(1, N_TITLES + 1, size=(n, negatives))
    labels = np.zeros((n, 1 + negatives), dtype=np.float32)
    labels[:, 0] = 1.0
    return {
        "users": users.astype(np.int64),
        "countries": countries.astype(np.int64),
        "devices": devices.astype(np.int64),
        "candidates": np.concatenate([positive[:, None], negative], axis=1).astype(np.int64),
        "labels": labels,
    }


_CURRENCY_POOL: Final = ("USD", "EUR", "GBP", "BRL", "INR", "JPY", "MXN", "CHF")
_CURRENCY_P: Final = (0.4, 0.2, 0.1, 0.08, 0.08, 0.06, 0.04, 0.04)
_CURRENCY_RISK: Final = (0.0, -0.2, 0.1, 0.5, 0.3, -0.3, 0.8, 0.6)


def fraud_logit(columns: dict[str, Array]) -> Array:
    """The ground-truth fraud log-odds of transactions (before label noise)."""
    log_amount = np.log1p(columns["amount"].astype(np.float64)) - 3.5
    present = columns["card_present"].astype(np.float64)
    risk = dict(zip(_CURRENCY_POOL, _CURRENCY_RISK, strict=True))
    currency = np.array([risk[c] for c in columns["currency"]])
    return np.asarray(
        -3.0
        + 0.6 * log_amount
        + 1.8 * columns["country_mismatch"].astype(np.float64)
        - 0.5 * (np.log1p(columns["account_age_days"].astype(np.float64)) - 5.0)
        + 0.4 * (columns["tx_last_24h"].astype(np.float64) - 1.5)
        - 1.4 * present
        + 0.7 * log_amount * (1.0 - present)
        + currency
    )


def transactions(n: int, seed: int) -> tuple[dict[str, Array], Array]:
    """`n` card transactions as input columns (the payment_fraud input names and dtypes)
    and their fraud labels (float32 0/1)."""
    rng = np.random.default_rng(seed)
    columns = {
        "amount": rng.lognormal(mean=3.5, sigma=1.2, size=n).astype(np.float32),
        "currency": rng.choice(np.array(_CURRENCY_POOL), size=n, p=_CURRENCY_P),
        "country_mismatch": rng.random(n) < 0.12,
        "account_age_days": rng.exponential(scale=400.0, size=n).astype(np.float32),
        "tx_last_24h": rng.poisson(1.5, size=n).astype(np.int64),
        "card_present": rng.random(n) < 0.55,
    }
    logit = fraud_logit(columns) + rng.normal(scale=0.5, size=n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return columns, labels
