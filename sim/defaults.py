"""The catalog a scenario gets when it names no ``[[workflows]]`` / ``[[objectives]]``.

Eight model versions behind four objectives that use every kind of rule: an A/B
experiment (continue_watching_ranking), a context rule plus a canary (payment_fraud), a
canary (search) and a shadow model (artwork). Plain data; ``shardline.sim.scenario`` validates it.
"""

from __future__ import annotations

from typing import Any

WORKFLOWS: tuple[dict[str, Any], ...] = (
    {"key": "title_ranking@v1"},
    {"key": "title_ranking@v2", "base_ms": 5.0},
    {"key": "payment_fraud@v1", "base_ms": 2.0, "per_item_ms": 0.1, "replicas": 3},
    {"key": "payment_fraud@v2", "base_ms": 2.5, "per_item_ms": 0.1},
    {"key": "search_ranking@v3", "base_ms": 3.0, "per_item_ms": 0.3},
    {"key": "search_ranking@v4", "base_ms": 3.0, "per_item_ms": 0.3},
    {"key": "artwork@v1", "base_ms": 6.0, "per_item_ms": 0.6, "max_batch": 16},
    {"key": "artwork@v2", "base_ms": 6.0, "per_item_ms": 0.6, "max_batch": 16},
)

OBJECTIVES: tuple[dict[str, Any], ...] = (
    {
        "rate_per_s": 300.0,
        "config": {
            "name": "continue_watching_ranking",
            "default": "title_ranking@v1",
            "experiments": [
                {
                    "id": "rank_v2",
                    "percent": 20,
                    "cells": [
                        {"name": "control", "model": "title_ranking@v1", "percent": 50},
                        {"name": "treatment", "model": "title_ranking@v2", "percent": 50},
                    ],
                }
            ],
        },
    },
    {
        "rate_per_s": 200.0,
        "deadline_ms": 150.0,
        "config": {
            "name": "payment_fraud",
            "default": "payment_fraud@v1",
            "rules": [{"name": "br", "model": "payment_fraud@v2", "match": {"country": "BR"}}],
            "canary": {"model": "payment_fraud@v2", "percent": 5},
        },
    },
    {
        "rate_per_s": 200.0,
        "deadline_ms": 200.0,
        "config": {
            "name": "search",
            "default": "search_ranking@v3",
            "canary": {"model": "search_ranking@v4", "percent": 10},
        },
    },
    {
        "rate_per_s": 100.0,
        "deadline_ms": 400.0,
        "config": {
            "name": "artwork",
            "default": "artwork@v1",
            "shadows": [{"model": "artwork@v2", "percent": 10}],
        },
    },
)
