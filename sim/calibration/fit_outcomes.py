"""The rest of a fitted scenario: which models answer, how their APIs failed, and what the caches did.

`fit_table` (sim/calibration/fit.py) fits the traffic; this module fits what the usage says about
everything after it, so that the fitted file runs as written and prices the usage as it was priced:

- models: the model of every ok call. One model is `[router] model`; two are a router that sends exactly
  the observed share of messages to the dearer one (hard_share = that share, hard_to_expensive = 1,
  easy_to_expensive = 0: the usage has no difficulty labels, so the split is carried by `hard`, which
  then moves the forecast's quality figure, not its cost). A third model and beyond cannot be written
  (a scenario routes between two at most): their calls are folded into the two most used and a note
  says how many. A trace has no models: the `--model` given, default gpt-4o-mini (as `margins replay`).
- failures, per model, over its attempts (rate-limited ones aside, as the simulator draws them):
  error_rate = error / attempts, timeout_rate = timeout / attempts, bad_completion_rate = aborted /
  attempts, and what failed attempts billed (any output tokens: full; input only: input; none:
  nothing). Where the usage has none of an outcome its rate is 0: nothing is invented.
- rate limits: the pass-through's limits, out of reach. A usage with rate-limited attempts shows that a
  limit bound, not where it was: a note says so and the limit is not guessed.
- the provider's prompt cache: on for a model whose calls read or wrote cached input.
- the exact cache: on when exact cache hits are observed; `scope = "user"` when every hit repeats a
  prompt its own user sent before, else global; `ttl_s` the default day, or the oldest hit's age (since
  the prompt's last model call) when a hit came later than that. Semantic and fragment hits are counted
  in a note, not fitted: a semantic cache's threshold and profile, or a chain's steps, are not visible
  in usage events.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from budget.domain.catalog import default_catalog
from budget.domain.events import UsageRecorded
from sim.errors import FitError
from sim.model.scenario import ExactCache

DEFAULT_MODEL = "gpt-4o-mini"  # the pass-through's model: what `margins replay` prices a trace at
# Limits far above any usage's load, so a fitted scenario never rate-limits (rpm/tpm are per minute).
UNBOUND_RPM = 10**9
UNBOUND_TPM = 10**12
ATTEMPT_OUTCOMES = ("ok", "error", "timeout", "aborted")


def passthrough_provider() -> dict[str, Any]:
    """A provider that never fails and never rate-limits: what is written where the usage shows nothing."""
    return {
        "error_rate": 0.0,
        "timeout_rate": 0.0,
        "bad_completion_rate": 0.0,
        "rpm": UNBOUND_RPM,
        "tpm": UNBOUND_TPM,
    }


@dataclass(frozen=True, slots=True)
class OutcomeFit:
    """The scenario sections fitted from outcomes, and notes on what could not be fitted."""

    tables: dict[str, Any]
    notes: tuple[str, ...] = ()


def fit_outcomes(events: Sequence[UsageRecorded], model: str | None, where: str) -> OutcomeFit:
    """Router, providers and caches from usage events; from a trace (no events), the pass-through at
    `model` (default gpt-4o-mini). `model` given with events prices every call at it instead."""
    if model is not None and model not in default_catalog():
        raise FitError("--model", str(default_catalog().unknown(model)))
    if not events:
        chosen = model or DEFAULT_MODEL
        return OutcomeFit({"router": {"model": chosen}, "providers": {chosen: passthrough_provider()}})
    notes: list[str] = []
    router, models, share_dear = _router(events, model, where, notes)
    tables: dict[str, Any] = {"router": router}
    if share_dear is not None:
        tables["prompts"] = {"hard_share": round(share_dear, 6)}
    tables["providers"] = {name: _provider(events, name, model, notes) for name in models}
    cache = _exact_cache(events)
    if cache is not None:
        tables["cache"] = {"exact": cache}
    notes += _unfitted_hits(events)
    return OutcomeFit(tables, tuple(notes))


def _router(
    events: Sequence[UsageRecorded], model: str | None, where: str, notes: list[str]
) -> tuple[dict[str, Any], tuple[str, ...], float | None]:
    """The router table, the models it calls, and the dearer model's share of messages (two models)."""
    if model is not None:
        return {"model": model}, (model,), None
    calls = Counter(event.model for event in events if event.outcome == "ok")
    if not calls:
        raise FitError(where, "no ok usage events: nothing says which model answered")
    catalog = default_catalog()
    unknown = sorted(name for name in calls if name not in catalog)
    if unknown:
        raise FitError(where, f"model {unknown[0]!r} has no known price; pass --model to price the usage")
    ranked = [name for name, _ in calls.most_common()]
    if len(ranked) == 1:
        return {"model": ranked[0]}, (ranked[0],), None
    two = ranked[:2]
    if len(ranked) > 2:
        others = sum(calls[name] for name in ranked[2:])
        notes.append(
            f"models: {others:,} ok calls to {', '.join(ranked[2:])} are folded into {two[0]} and {two[1]} "
            "(a scenario routes between two models at most)"
        )
    cheap, dear = sorted(two, key=lambda name: (catalog[name].input + catalog[name].output, name))
    share = calls[dear] / (calls[cheap] + calls[dear])
    router = {
        "enabled": True,
        "cheap_model": cheap,
        "expensive_model": dear,
        "hard_to_expensive": 1.0,
        "easy_to_expensive": 0.0,
    }
    notes.append(f"models: {share:.1%} of ok calls to {dear}, the rest to {cheap} (as hard_share)")
    return router, (cheap, dear), share


def _provider(
    events: Sequence[UsageRecorded], name: str, model: str | None, notes: list[str]
) -> dict[str, Any]:
    """One model's failure rates, billing of failures and prompt cache, from its attempts."""
    mine = [e for e in events if model is not None or e.model == name]
    outcomes: Counter[str] = Counter(e.outcome for e in mine)
    attempts = sum(outcomes[o] for o in ATTEMPT_OUTCOMES)
    provider = passthrough_provider()
    if attempts:
        provider["error_rate"] = round(outcomes["error"] / attempts, 6)
        provider["timeout_rate"] = round(outcomes["timeout"] / attempts, 6)
        provider["bad_completion_rate"] = round(outcomes["aborted"] / attempts, 6)
    for outcome, key in (("error", "error_bills"), ("timeout", "timeout_bills")):
        billing = _billing([e for e in mine if e.outcome == outcome])
        if billing is not None:
            provider[key] = billing
    if any(e.cached_input_tokens or e.cache_write_tokens for e in mine):
        provider["prompt_cache"] = True
    if outcomes["rate_limited"]:
        notes.append(
            f"{name}: {outcomes['rate_limited']:,} rate-limited attempts show that a limit bound, not where: "
            "rpm and tpm are not fitted (set them from the provider's tier)"
        )
    return provider


def _billing(failed: Sequence[UsageRecorded]) -> str | None:
    """What failed attempts billed, judged from their tokens; None when there were none."""
    if not failed:
        return None
    if any(e.output_tokens > 0 for e in failed):
        return "full"
    return "input" if any(e.input_tokens > 0 for e in failed) else "nothing"


def _exact_cache(events: Sequence[UsageRecorded]) -> dict[str, Any] | None:
    """The exact cache that answered the usage's exact hits, or None when none were observed."""
    ordered = sorted(events, key=lambda e: e.ts)
    last_sent: dict[str, float] = {}
    senders: defaultdict[str, set[str]] = defaultdict(set)
    hits = 0
    own_user_only = True
    oldest = 0.0
    for event in ordered:
        key, at = event.prompt_hash, event.ts.timestamp()
        if event.outcome == "cache_hit" and event.cache_layer == "exact":
            hits += 1
            own_user_only &= key is not None and event.user_id in senders[key]
            if key is not None and key in last_sent:
                oldest = max(oldest, at - last_sent[key])
        elif event.outcome != "cache_hit" and key is not None:
            # any attempt, failed ones too: a request that finally failed still wrote its cache entry
            last_sent[key] = at
            senders[key].add(event.user_id)
    if not hits:
        return None
    default_ttl = ExactCache().ttl_s
    table: dict[str, Any] = {"enabled": True, "scope": "user" if own_user_only else "global"}
    if oldest > default_ttl:
        table["ttl_s"] = round(oldest + 1.0, 1)
    return table


def _unfitted_hits(events: Sequence[UsageRecorded]) -> list[str]:
    layers: Counter[str | None] = Counter(e.cache_layer for e in events if e.outcome == "cache_hit")
    return [
        f"cache: {layers[layer]:,} {layer} cache hits observed, not fitted ({why})"
        for layer, why in (
            ("semantic", "its threshold and profile are not in usage events"),
            ("fragment", "chain steps are not tied to their message in usage events"),
        )
        if layers[layer]
    ]
