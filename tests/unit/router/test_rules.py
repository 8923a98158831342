"""Unit tests for router/objectives.py and router/rules.py: objective config validation
and model selection."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardline.router.decision import Decision
from shardline.router.objectives import (
    MODEL_KEY_RE,
    OBJECTIVE_NAME_RE,
    Canary,
    ConfigError,
    ContextRule,
    Experiment,
    ExperimentCell,
    ModelKey,
    ObjectiveConfig,
    ShadowTarget,
    load_objective_file,
    load_objectives_dir,
)
from shardline.router.rules import OverrideNotAllowed, RequestContext, evaluate, stable_bucket

EXAMPLES = Path(__file__).resolve().parents[3] / "workflows" / "examples" / "objectives"
USERS = [f"user-{i}" for i in range(10_000)]

FRAUD_TOML = """
name = "payment_fraud"
description = "fraud scoring"
default = "payment_fraud@1"
allow_override = false

[[rules]]
name = "brazil"
model = "payment_fraud@2"
[rules.match]
country = ["BR", "AR"]
device = "tv"

[[experiments]]
id = "fraud-exp-7"
percent = 20.0
[[experiments.cells]]
name = "control"
model = "payment_fraud@1"
percent = 50.0
[[experiments.cells]]
name = "treatment"
model = "payment_fraud@3"
percent = 50.0

[canary]
model = "payment_fraud@2"
percent = 5.0

[[shadows]]
model = "payment_fraud@2"
percent = 100.0
"""


def base() -> dict[str, Any]:
    return ObjectiveConfig.from_toml(FRAUD_TOML).to_dict()


def share(decisions: list[Decision], pred: Any) -> float:
    return 100.0 * sum(1 for d in decisions if pred(d)) / len(decisions)


# --- model keys, contexts, hashing -------------------------------------------------


def test_model_key_parse_and_str() -> None:
    key = ModelKey.parse("title_ranking@2.1-rc_1")
    assert (key.name, key.version, str(key)) == (
        "title_ranking",
        "2.1-rc_1",
        "title_ranking@2.1-rc_1",
    )
    for bad in ["", "x", "X@1", "a@", "@1", "a@1@2", "a b@1", "a@1\n", "a@1/2"]:
        with pytest.raises(ConfigError, match="not a model key"):
            ModelKey.parse(bad)
    with pytest.raises(ConfigError):
        ModelKey("Bad", "1")
    assert MODEL_KEY_RE.match("a@1") and not MODEL_KEY_RE.match("a@1\n")
    assert OBJECTIVE_NAME_RE.match("payment_fraud") and not OBJECTIVE_NAME_RE.match("Pay")


def test_context_get_builtin_then_attributes() -> None:
    ctx = RequestContext("u", country="BR", attributes={"device": "tv", "plan": "basic"})
    assert ctx.get("country") == "BR"
    assert ctx.get("device") == "tv"  # empty built-in falls back to attributes
    assert ctx.get("plan") == "basic"
    assert ctx.get("surface") is None and ctx.get("missing") is None
    assert ctx.get("user_id") is None  # only attributes are consulted for other keys
    assert ctx == RequestContext("u", country="BR", attributes={"plan": "basic", "device": "tv"})
    hash(ctx)


def test_stable_bucket_is_blake2b_of_joined_parts() -> None:
    digest = hashlib.blake2b(b"enrol\x1fexp\x1fuser-1", digest_size=8).digest()
    assert stable_bucket("enrol", "exp", "user-1") == int.from_bytes(digest, "big") % 10_000
    assert stable_bucket("enrol", "exp", "user-1") == 2904  # pinned: must never change
    assert stable_bucket("a", "b", buckets=97) == 56
    assert 0 <= stable_bucket("\ud800") < 10_000  # lone surrogates do not crash
    with pytest.raises(ValueError):
        stable_bucket("x", buckets=0)


# --- validation ----------------------------------------------------------------------


def _set(path: list[Any], value: Any) -> dict[str, Any]:
    d = base()
    target = d
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


_DELETE = object()

BAD_CONFIGS = [
    (["default"], "payment_fraud", "default: "),
    (["default"], _DELETE, "default: required field is missing"),
    (["name"], "Payment-Fraud", "name: "),
    (["rules", 0, "model"], "nope", "rules[0].model: 'nope' is not a model key"),
    (["canary", "model"], "x@", "canary.model: "),
    (["shadows", 0, "model"], 3, "shadows[0].model: "),
    (["experiments", 0, "cells", 1, "percent"], 60.0, "experiments[0].cells: percents must add"),
    (["experiments", 0, "cells", 1, "percent"], 150, "experiments[0].cells[1].percent: must be "),
    (["experiments", 0, "cells", 1, "percent"], -1, "experiments[0].cells[1].percent: must be "),
    (["experiments", 0, "cells", 1, "percent"], True, "experiments[0].cells[1].percent: must be a"),
    (["experiments", 0, "percent"], 100.5, "experiments[0].percent: must be between 0 and 100"),
    (["experiments", 0, "percent"], float("nan"), "experiments[0].percent: must be between"),
    (["canary", "percent"], 101, "canary.percent: must be between 0 and 100"),
    (["shadows", 0, "percent"], "5", "shadows[0].percent: must be a number"),
    (["experiments", 0, "cells", 1, "name"], "control", "experiments[0].cells[1].name: duplicate"),
    (["experiments", 0, "cells"], [], "experiments[0].cells: must list at least one cell"),
    (["experiments", 0, "id"], "a:b", "experiments[0].id: "),
    (["rules", 0, "match"], {}, "rules[0].match: must list at least one attribute"),
    (["rules", 0, "match"], "BR", "rules[0].match: must be a table"),
    (["rules", 0, "match", "country"], [], "rules[0].match.country: must be a non-empty"),
    (["rules", 0, "match", "country"], ["BR", 1], "rules[0].match.country: must be a non-empty"),
    (["rules", 0, "mach"], {}, "rules[0].mach: unknown key(s) 'mach'"),
    (["bogus"], 1, "bogus: unknown key(s) 'bogus'"),
    (["canary", "extra"], 1, "canary.extra: unknown key(s)"),
    (["canary", "percent"], _DELETE, "canary.percent: required field is missing"),
    (["experiments", 0, "cells", 0, "colour"], 1, "experiments[0].cells[0].colour: unknown key"),
    (["rules"], {"name": "x"}, "rules: must be a list"),
    (["rules", 0], "x", "rules[0]: must be a table"),
    (["allow_override"], "yes", "allow_override: must be true or false"),
    (["description"], 3, "description: must be a string"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_CONFIGS)
def test_bad_config_names_the_field(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ObjectiveConfig.from_dict(_set(path, value))
    assert str(info.value).startswith(message), str(info.value)


def test_duplicate_names_are_rejected() -> None:
    d = base()
    d["rules"].append(copy.deepcopy(d["rules"][0]))
    with pytest.raises(ConfigError, match=r"^rules\[1\]\.name: duplicate rule name 'brazil'"):
        ObjectiveConfig.from_dict(d)
    d = base()
    d["experiments"].append(copy.deepcopy(d["experiments"][0]))
    with pytest.raises(ConfigError, match=r"^experiments\[1\]\.id: duplicate experiment id"):
        ObjectiveConfig.from_dict(d)
    d = base()
    d["shadows"].append({"model": "payment_fraud@2"})
    with pytest.raises(ConfigError, match=r"^shadows\[1\]\.model: duplicate shadow model"):
        ObjectiveConfig.from_dict(d)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="percent: must be between 0 and 100"):
        Canary("a@1", 120.0)
    with pytest.raises(ConfigError, match="cells: percents must add to 100"):
        Experiment("e", (ExperimentCell("a", "a@1", 40.0),))
    with pytest.raises(ConfigError, match=r"^match: must list"):
        ContextRule("r", "a@1", ())
    assert ShadowTarget("a@1").percent == 100.0


def test_invalid_toml() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        ObjectiveConfig.from_toml("name = ")


# --- round trips -----------------------------------------------------------------------


def test_toml_round_trip() -> None:
    config = ObjectiveConfig.from_toml(FRAUD_TOML)
    assert config.rules[0].match == (("country", ("BR", "AR")), ("device", ("tv",)))
    assert config.experiments[0].cells[1] == ExperimentCell("treatment", "payment_fraud@3", 50.0)
    assert config.canary == Canary("payment_fraud@2", 5.0)
    assert ObjectiveConfig.from_dict(config.to_dict()) == config
    assert ObjectiveConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["rules"][0]["match"] == {"country": ["BR", "AR"], "device": "tv"}
    keys = {"payment_fraud@1", "payment_fraud@2", "payment_fraud@3"}
    assert config.model_keys() == frozenset(keys)


def test_defaults_for_optional_fields() -> None:
    config = ObjectiveConfig.from_dict({"name": "o", "default": "m@1"})
    assert config == ObjectiveConfig("o", "m@1")
    assert not config.allow_override and config.canary is None
    assert config.to_dict() == {
        "name": "o",
        "default": "m@1",
        "description": "",
        "allow_override": False,
        "rules": [],
        "experiments": [],
        "shadows": [],
        "warm": False,
    }


# --- evaluation ------------------------------------------------------------------------


def rules_config(*rules: dict[str, Any]) -> ObjectiveConfig:
    return ObjectiveConfig.from_dict({"name": "o", "default": "m@0", "rules": list(rules)})


def test_rules_first_match_wins() -> None:
    config = rules_config(
        {"name": "br_tv", "model": "m@1", "match": {"country": "BR", "device": "tv"}},
        {"name": "br", "model": "m@2", "match": {"country": "BR"}},
        {"name": "tv", "model": "m@3", "match": {"device": "tv"}},
    )
    cases = {("BR", "tv"): "br_tv", ("BR", "web"): "br", ("US", "tv"): "tv"}
    for (country, device), rule in cases.items():
        decision = evaluate(config, RequestContext("u", country=country, device=device))
        assert decision.cell == f"rule:{rule}" and rule in decision.reason
    assert evaluate(config, RequestContext("u", country="US")).cell == "default"
    assert evaluate(config, RequestContext("u", country="br", device="TV")).cell == "default"


def test_rule_any_of_values_and_attributes() -> None:
    config = rules_config(
        {"name": "latam", "model": "m@1", "match": {"country": ["BR", "AR"], "plan": "basic"}}
    )
    basic = {"plan": "basic"}
    assert evaluate(config, RequestContext("u", country="AR", attributes=basic)).model_key == "m@1"
    assert evaluate(config, RequestContext("u", country="BR", attributes=basic)).model_key == "m@1"
    assert evaluate(config, RequestContext("u", country="CL", attributes=basic)).cell == "default"
    assert evaluate(config, RequestContext("u", country="BR")).cell == "default"  # missing attr
    via_attr = RequestContext("u", attributes={"country": "BR", "plan": "basic"})
    assert evaluate(config, via_attr).cell == "rule:latam"


def test_override_allowed_and_refused() -> None:
    allowed = ObjectiveConfig.from_dict({**base(), "allow_override": True})
    ctx = RequestContext("u", country="BR", device="tv")
    decision = evaluate(allowed, ctx, override="payment_fraud@3")
    assert (decision.model_key, decision.cell) == ("payment_fraud@3", "override")
    assert decision.shadows == ("payment_fraud@2",)
    assert evaluate(allowed, ctx, override="").cell == "rule:brazil"  # "" means none
    with pytest.raises(OverrideNotAllowed, match="not a model of objective 'payment_fraud'"):
        evaluate(allowed, ctx, override="payment_fraud@9")
    with pytest.raises(OverrideNotAllowed, match="does not allow overrides"):
        evaluate(ObjectiveConfig.from_dict(base()), ctx, override="payment_fraud@1")


def test_shadow_equal_to_chosen_model_is_omitted() -> None:
    config = ObjectiveConfig.from_toml(FRAUD_TOML)
    decisions = [evaluate(config, RequestContext(u)) for u in USERS[:2000]]
    for d in decisions:
        assert d.shadows == (() if d.model_key == "payment_fraud@2" else ("payment_fraud@2",))
    assert any(d.cell == "canary" for d in decisions)


def test_allocation_matches_configured_percents() -> None:
    cells = [("a", 50.0), ("b", 30.0), ("c", 15.0), ("d", 5.0)]
    config = ObjectiveConfig(
        "o",
        "m@0",
        experiments=(
            Experiment("exp-1", tuple(ExperimentCell(n, f"m@{n}", p) for n, p in cells), 40.0),
        ),
        canary=Canary("m@canary", 10.0),
        shadows=(ShadowTarget("m@shadow", 25.0),),
    )
    decisions = [evaluate(config, RequestContext(u)) for u in USERS]
    counts = Counter(d.cell for d in decisions)
    enrolled = [d for d in decisions if d.cell.startswith("exp-1:")]
    assert abs(100.0 * len(enrolled) / len(USERS) - 40.0) <= 2.0
    for name, percent in cells:
        assert abs(share(enrolled, lambda d, n=name: d.cell == f"exp-1:{n}") - percent) <= 2.0
    rest = [d for d in decisions if not d.cell.startswith("exp-1:")]
    assert abs(share(rest, lambda d: d.cell == "canary") - 10.0) <= 2.0
    assert abs(share(decisions, lambda d: d.shadows == ("m@shadow",)) - 25.0) <= 2.0
    assert counts["default"] > 0


def test_zero_and_full_percents() -> None:
    cells = (ExperimentCell("off", "m@1", 0.0), ExperimentCell("on", "m@2", 100.0))
    config = ObjectiveConfig("o", "m@0", experiments=(Experiment("e", cells),))
    assert {evaluate(config, RequestContext(u)).cell for u in USERS[:500]} == {"e:on"}
    none = ObjectiveConfig("o", "m@0", canary=Canary("m@1", 0.0), shadows=(ShadowTarget("m@2", 0),))
    assert {
        (d.cell, d.shadows) for d in (evaluate(none, RequestContext(u)) for u in USERS[:500])
    } == {("default", ())}


def test_canary_does_not_depend_on_experiment_ids() -> None:
    def config(exp_id: str) -> ObjectiveConfig:
        cells = (ExperimentCell("control", "m@1", 50.0), ExperimentCell("treatment", "m@2", 50.0))
        exp = Experiment(exp_id, cells, percent=30.0)
        return ObjectiveConfig("o", "m@1", experiments=(exp,), canary=Canary("m@3", 5.0))

    first = [evaluate(config("exp-a"), RequestContext(u)) for u in USERS]
    second = [evaluate(config("exp-b"), RequestContext(u)) for u in USERS]
    changed = sum(
        a.cell.startswith("exp-a:") != b.cell.startswith("exp-b:")
        for a, b in zip(first, second, strict=True)
    )
    assert changed > 1000  # the experiment reshuffled its enrolment...
    for a, b in zip(first, second, strict=True):
        if not a.cell.startswith("exp-a:") and not b.cell.startswith("exp-b:"):
            assert a.cell == b.cell  # ...but never the canary split of the others
    bare = ObjectiveConfig("o", "m@1", canary=Canary("m@3", 5.0))
    for user, decision in zip(USERS, first, strict=True):
        if not decision.cell.startswith("exp-a:"):
            assert decision.cell == evaluate(bare, RequestContext(user)).cell


def test_empty_user_id_hashes_the_empty_string() -> None:
    config = ObjectiveConfig.from_toml(FRAUD_TOML)
    decisions = {evaluate(config, RequestContext("", country="US")) for _ in range(3)}
    assert len(decisions) == 1


# --- property tests -----------------------------------------------------------------

KEYS = ["m@1", "m@2", "m@3", "n@1.0", "n@2-beta"]
LABELS = st.text("abcxyz_-.0189", min_size=1, max_size=6)
PERCENT = st.floats(0.0, 100.0, allow_nan=False)


@st.composite
def cells_strategy(draw: st.DrawFn) -> tuple[ExperimentCell, ...]:
    names = draw(st.lists(LABELS, min_size=1, max_size=4, unique=True))
    cuts = sorted(
        draw(st.lists(st.integers(0, 10_000), min_size=len(names) - 1, max_size=len(names) - 1))
    )
    bounds = [0, *cuts, 10_000]
    return tuple(
        ExperimentCell(n, draw(st.sampled_from(KEYS)), (bounds[i + 1] - bounds[i]) / 100)
        for i, n in enumerate(names)
    )


MATCH = st.dictionaries(
    st.sampled_from(["country", "device", "surface", "plan"]),
    st.one_of(
        st.sampled_from(["BR", "US", "tv"]),
        st.lists(st.sampled_from(["BR", "AR", "tv", "web"]), min_size=1, max_size=3),
    ),
    min_size=1,
)


@st.composite
def configs(draw: st.DrawFn) -> ObjectiveConfig:
    rule_names = draw(st.lists(LABELS, max_size=3, unique=True))
    rules = tuple(
        ContextRule(
            n,
            draw(st.sampled_from(KEYS)),
            tuple((k, (v,) if isinstance(v, str) else tuple(v)) for k, v in draw(MATCH).items()),
        )
        for n in rule_names
    )
    exp_ids = draw(st.lists(LABELS, max_size=3, unique=True))
    experiments = tuple(Experiment(i, draw(cells_strategy()), draw(PERCENT)) for i in exp_ids)
    canary = draw(st.none() | st.builds(Canary, st.sampled_from(KEYS), PERCENT))
    shadow_keys = draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True))
    shadows = tuple(ShadowTarget(k, draw(PERCENT)) for k in shadow_keys)
    return ObjectiveConfig(
        "obj",
        draw(st.sampled_from(KEYS)),
        allow_override=draw(st.booleans()),
        rules=rules,
        experiments=experiments,
        canary=canary,
        shadows=shadows,
    )


contexts = st.builds(
    RequestContext,
    user_id=st.text(max_size=12),
    country=st.sampled_from(["", "BR", "AR", "US"]),
    device=st.sampled_from(["", "tv", "web"]),
    surface=st.sampled_from(["", "home"]),
    attributes=st.dictionaries(
        st.sampled_from(["plan", "country"]), st.sampled_from(["BR", "basic"])
    ),
)


@settings(max_examples=300, deadline=None)
@given(configs(), contexts)
def test_evaluate_is_deterministic_and_stays_within_model_keys(
    config: ObjectiveConfig, ctx: RequestContext
) -> None:
    decision = evaluate(config, ctx)
    assert decision == evaluate(config, ctx)
    assert decision == evaluate(ObjectiveConfig.from_dict(config.to_dict()), ctx)
    keys = config.model_keys()
    assert decision.model_key in keys
    assert set(decision.shadows) <= keys and decision.model_key not in decision.shadows
    assert decision.objective == "obj" and decision.reason
    assert decision.cell in {"default", "canary"} | {f"rule:{r.name}" for r in config.rules} | {
        f"{e.id}:{c.name}" for e in config.experiments for c in e.cells
    }


@settings(max_examples=200, deadline=None)
@given(configs())
def test_to_dict_round_trips(config: ObjectiveConfig) -> None:
    assert ObjectiveConfig.from_dict(config.to_dict()) == config
    assert ObjectiveConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- files and the shipped examples -----------------------------------------------------


def test_load_file_errors_mention_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndefault = "nope"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: default: 'nope' is not a model key"):
        load_objective_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match=r"broken\.json: invalid JSON"):
        load_objective_file(broken)
    with pytest.raises(ConfigError, match=r"x\.yaml: unsupported file type"):
        load_objective_file(tmp_path / "x.yaml")


def test_load_dir_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(FRAUD_TOML)
    (tmp_path / "b.json").write_text(json.dumps({"name": "other", "default": "o@1"}))
    (tmp_path / "notes.txt").write_text("ignored")
    loaded = load_objectives_dir(tmp_path)
    assert sorted(loaded) == ["other", "payment_fraud"]
    assert loaded["payment_fraud"] == ObjectiveConfig.from_toml(FRAUD_TOML)
    (tmp_path / "c.json").write_text(json.dumps(base()))
    with pytest.raises(ConfigError, match=r"c\.json: name: objective 'payment_fraud' is also"):
        load_objectives_dir(tmp_path)


def test_example_continue_watching_ranking() -> None:
    config = load_objectives_dir(EXAMPLES)["continue_watching_ranking"]
    assert config == load_objective_file(EXAMPLES / "continue_watching_ranking.toml")
    assert config.model_keys() == {"title_ranking@1", "title_ranking@2"}
    tv_br = evaluate(config, RequestContext("u1", country="BR", device="tv"))
    assert (tv_br.model_key, tv_br.cell, tv_br.shadows) == ("title_ranking@2", "rule:brazil_tv", ())
    decisions = [evaluate(config, RequestContext(u, country="US", device="tv")) for u in USERS]
    enrolled = [d for d in decisions if d.cell.startswith("cw-two-tower:")]
    assert abs(100.0 * len(enrolled) / len(decisions) - 20.0) <= 2.0
    assert abs(share(enrolled, lambda d: d.model_key == "title_ranking@2") - 50.0) <= 2.0
    rest = [d for d in decisions if d.cell == "default"]
    assert len(rest) == len(decisions) - len(enrolled)
    assert abs(share(rest, lambda d: d.shadows == ("title_ranking@2",)) - 10.0) <= 2.0
    assert evaluate(config, RequestContext("u1"), override="title_ranking@2").cell == "override"


def test_example_payment_fraud() -> None:
    config = load_objectives_dir(EXAMPLES)["payment_fraud"]
    assert config.default == "payment_fraud@1" and config.allow_override
    decisions = [evaluate(config, RequestContext(u)) for u in USERS]
    assert abs(share(decisions, lambda d: d.cell == "canary") - 5.0) <= 2.0
    answered_by_v1 = [d for d in decisions if d.model_key == "payment_fraud@1"]
    assert abs(share(answered_by_v1, lambda d: d.shadows == ("payment_fraud@2",)) - 25.0) <= 2.0
    assert all(d.shadows == () for d in decisions if d.cell == "canary")
