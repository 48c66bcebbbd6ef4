"""How a scenario's quality score is computed, and where each of its inputs comes from (for the report).

The formula is the engine's (sim/model/engine.py quality_scores, sim/model/caps.py for a cap); this module
only says, for one scenario, which inputs it states and which are margins's illustrative defaults.
"""

from __future__ import annotations

from sim.model.scenario import DEFAULT_PROVIDER, Scenario, SemanticCache

FORMULA = (
    "Quality is the mean over requests of a 0-100 score: the eval score (easy or hard) of the model the "
    "router chose for the request (the cap's degrade model when it degraded it), which an exact-cache "
    "answer or a true semantic hit also gets; a wrong answer served (a semantic false hit, or a bad "
    "completion whose one regeneration was bad too) scores quality.false_hit, a request left unanswered "
    "quality.failed, and a request the cap denied quality.denied."
)


def quality_sources(scenario: Scenario) -> list[tuple[str, str, str]]:
    """(input, this scenario's value, where it comes from) for each input of the quality score."""
    rows = [_model_scores(scenario, model) for model in _scored_models(scenario)]
    rows.append(
        (
            "share of hard requests",
            f"{scenario.prompts.hard_share:g}",
            "prompts.hard_share: assumed, unless `margins fit` measured it from usage",
        )
    )
    if scenario.router.enabled:
        router = scenario.router
        rows.append(
            (
                "router: hard / easy requests sent to the expensive model",
                f"{router.hard_to_expensive:g} / {router.easy_to_expensive:g}",
                "[router] as written: measured when it came from `margins eval router`",
            )
        )
    if scenario.cache.semantic.enabled:
        rows.append(_semantic_profile(scenario))
    for model in _scored_models(scenario):
        rate = scenario.provider(model).bad_completion_rate
        default = rate == DEFAULT_PROVIDER.bad_completion_rate
        source = "default (assumed)" if default else "the scenario's (measured when `margins fit` wrote it)"
        rows.append((f"{model}: bad completion rate", f"{rate:g}", source))
    quality = scenario.quality
    rows.append(
        (
            "scores of a wrong, failed or denied answer",
            f"{quality.false_hit:g} / {quality.failed:g} / {quality.denied:g}",
            "conventions, not measurements",
        )
    )
    return rows


def _scored_models(scenario: Scenario) -> tuple[str, ...]:
    degrade = scenario.cap.degrade_model if scenario.cap is not None else None
    models = (*scenario.models, degrade) if degrade else scenario.models
    return tuple(dict.fromkeys(models))


def _model_scores(scenario: Scenario, model: str) -> tuple[str, str, str]:
    scores = scenario.quality_of(model)
    stated = model in scenario.quality.models
    source = (
        "[quality.models] in the scenario (your eval set)"
        if stated
        else "illustrative default for its tier (assumed)"
    )
    return (f"{model}: easy / hard eval score", f"{scores.easy:g} / {scores.hard:g}", source)


def _semantic_profile(scenario: Scenario) -> tuple[str, str, str]:
    semantic = scenario.cache.semantic
    default = semantic.profile == SemanticCache().profile
    source = (
        "the illustrative default profile (assumed)"
        if default
        else "the scenario's profile (measured when it came from `margins calibrate semantic`)"
    )
    return ("semantic cache: true / false hits at its threshold", f"threshold {semantic.threshold:g}", source)
