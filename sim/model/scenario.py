"""Scenarios: the schema of a what-if, its defaults, and load_scenario / parse_scenario.

A scenario is a TOML file describing traffic, prompts, caches, the router, providers, the retry policy,
streaming, quality and an optional cap. Every field has a default here -- the one place defaults live --
so a scenario names only what it changes. A bad file raises ScenarioError naming the file, the field and
what was expected (the checks that say so live in sim/model/scenario_checks.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Probability = Annotated[float, Meta(ge=0.0, le=1.0, description="a probability in [0, 1]")]
NonNegative = Annotated[float, Meta(ge=0.0, description="a number >= 0")]
Positive = Annotated[float, Meta(gt=0.0, description="a number > 0")]
PositiveInt = Annotated[int, Meta(ge=1, description="a whole number >= 1")]
NonNegativeInt = Annotated[int, Meta(ge=0, description="a whole number >= 0")]

# A typical consumer app: quiet at night, peaks around lunch and evening (relative weights, UTC hours).
_NIGHT_TO_NOON = (0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.0, 1.0, 1.05)
_NOON_TO_NIGHT = (1.1, 1.05, 1.0, 1.0, 1.0, 1.05, 1.1, 1.2, 1.25, 1.1, 0.8, 0.5)
DEFAULT_DIURNAL = (*_NIGHT_TO_NOON, *_NOON_TO_NIGHT)


class Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every scenario section: immutable, and an unknown key is an error (typos are common)."""


class Distribution(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A positive quantity: lognormal with this mean and shape `sigma` (0 = always the mean)."""

    mean: Positive
    sigma: NonNegative = 0.5


class Burst(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Traffic multiplied by `factor` for `hours` from the start of `start_day` (0-based)."""

    start_day: NonNegative
    hours: Positive
    factor: Positive


class Traffic(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who comes, how often, and when."""

    mau: list[PositiveInt] = msgspec.field(default_factory=lambda: [1000, 10000, 100000])
    days: Annotated[int, Meta(ge=1, le=366, description="days simulated: 1 to 366, months from `start`")] = 30
    start: str = "2026-11-01"
    # Sessions per user per month: gamma-Poisson (negative binomial). A smaller `dispersion` gives a
    # heavier tail: a few users with many sessions, the ones that eat the margin.
    sessions_per_user_month: float = 8.0
    dispersion: Positive = 0.7
    messages_per_session: Positive = 5.0
    think_time_s: Positive = 30.0
    diurnal: list[NonNegative] = msgspec.field(default_factory=lambda: list(DEFAULT_DIURNAL))
    bursts: list[Burst] = msgspec.field(default_factory=list)


class Chains(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Multi-step chains: `steps` model calls per message, the first `deterministic_steps` of which
    depend only on a shared context (a document, a product page) and so can be served from a cache."""

    share: Probability = 0.0
    steps: PositiveInt = 3
    deterministic_steps: NonNegativeInt = 1
    context_catalog_size: PositiveInt = 5000
    context_zipf_exponent: NonNegative = 1.0


class ConversationContext(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What each call of a chat turn resends (sim/model/conversation.py): the system prompt and the history.

    Off by default (no system prompt, no history): `input_tokens` is then each call's whole input. On,
    `input_tokens` is the turn's own new input and a call that answers the user (every call but the
    deterministic chain steps, which depend only on their shared context) sends
    system_tokens + the history + its new input, at most `max_tokens`. With `history`, a turn's history
    is every earlier turn of its session: its new input and its answer (those of its last call).

    At the limit, `truncate` drops the oldest turns, for good (the app trims its stored history), and
    `summarize` replaces the whole history by a summary of `summary_tokens` (when the history is longer
    than that): a model call of its own, made just before the turn that would not fit, whatever answers
    that turn (the next turns carry the summary), by the model routed for it, billed like any call --
    system prompt + the history it condenses in, summary_tokens out -- through the same failures, retries
    and rate limits; the turn's calls wait for it. Either way a single message longer than the limit is
    cut to it.
    """

    system_tokens: NonNegativeInt = 0
    history: bool = False
    max_tokens: Annotated[int, Meta(ge=1, le=10_000_000, description="a whole number in 1..10,000,000")] = (
        128_000  # gpt-4o's and gpt-4o-mini's context window
    )
    at_limit: Literal["truncate", "summarize"] = "truncate"
    summary_tokens: PositiveInt = 500  # a few paragraphs: what was asked, what was answered, what is open

    @property
    def active(self) -> bool:
        """Does a turn send anything beyond its own new input?"""
        return self.history or self.system_tokens > 0


class Prompts(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What users ask: exact repeats and paraphrases of a popular catalog, and novel prompts."""

    catalog_size: PositiveInt = 20000
    zipf_exponent: NonNegative = 1.0
    repeat_share: Probability = 0.2
    paraphrase_share: Probability = 0.15
    hard_share: Probability = 0.25
    input_tokens: Distribution = Distribution(mean=800.0, sigma=0.6)
    output_tokens: Distribution = Distribution(mean=250.0, sigma=0.5)
    # Share of each call's input that is a stable prefix (system prompt, tools, earlier turns) that a
    # provider's prompt cache can serve when the same user called within its lifetime. A trace with
    # prefix hashes (Mooncake) brings its own prefixes instead, and [prompts.context] its system prompt
    # and history (the two do not go together).
    prefix_share: Probability = 0.0
    chains: Chains = Chains()
    context: ConversationContext = ConversationContext()


class ExactCache(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Exact-match cache: the same prompt (per user, or across users) answered from the cache."""

    enabled: bool = False
    ttl_s: Positive = 86400.0
    capacity: PositiveInt = 100000
    scope: Literal["global", "user"] = "global"


class SemanticCache(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Embedding-similarity cache. The profile turns the threshold into the chance of a true hit (a
    near-duplicate is cached and found) and of a false hit (a wrong cached answer is served)."""

    enabled: bool = False
    threshold: Probability = 0.9
    ttl_s: Positive = 86400.0
    capacity: PositiveInt = 100000
    # Rows of [threshold, true-hit rate, false-hit rate], thresholds ascending; linear in between.
    # The default is illustrative; `margins calibrate semantic` measures one from labelled queries.
    profile: list[list[Probability]] = msgspec.field(
        default_factory=lambda: [
            [0.80, 0.92, 0.060],
            [0.85, 0.85, 0.025],
            [0.90, 0.72, 0.008],
            [0.95, 0.45, 0.002],
            [0.99, 0.10, 0.000],
        ]
    )


class FragmentCache(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Result-fragment cache: deterministic chain steps served from cache for a context seen before."""

    enabled: bool = False
    ttl_s: Positive = 86400.0
    capacity: PositiveInt = 100000


class Caches(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The three cache layers, each on or off."""

    exact: ExactCache = ExactCache()
    semantic: SemanticCache = SemanticCache()
    fragment: FragmentCache = FragmentCache()


class Router(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One model for everything, or a classifier routing between a cheap and an expensive model.

    The classifier is described by what an eval set measured: the share of hard requests it sends to
    the expensive model, and the share of easy requests it sends there too.
    """

    model: str = "gpt-4o"
    enabled: bool = False
    cheap_model: str = "gpt-4o-mini"
    expensive_model: str = "gpt-4o"
    hard_to_expensive: Probability = 0.9
    easy_to_expensive: Probability = 0.1


Billing = Literal["nothing", "input", "full"]


class Provider(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a model's API behaves: speed, failures, limits, and what a failed call bills."""

    ttft_ms: Positive = 500.0
    ttft_sigma: NonNegative = 0.5  # spread of the time to first token (lognormal shape; median = ttft_ms)
    tokens_per_s: Positive = 70.0
    error_rate: Probability = 0.01
    timeout_rate: Probability = 0.003
    bad_completion_rate: Probability = 0.02
    rpm: PositiveInt = 10000
    tpm: PositiveInt = 2_000_000
    timeout_s: Positive = 60.0
    error_bills: Billing = "nothing"
    timeout_bills: Billing = "full"
    # Provider prompt caching (sim/model/policies/prompt_cache.py): a prompt prefix seen within the cache's
    # lifetime is billed at the cached-input price, a new one at cache_write; shorter prefixes are not cached.
    prompt_cache: bool = False
    prompt_cache_ttl_s: Positive = 300.0
    prompt_cache_min_tokens: NonNegativeInt = 1024


class Retry(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`naive`: max_retries on everything with exponential backoff; `sdk-default`: 2 retries with
    min(0.5 s x 2^n, 8 s) and jitter on 408/409/429/5xx; `cost-aware`: one retry on transient errors,
    none on a rate limit -- show a fallback and queue the call until a window has room for it, failing it
    after `queue_windows` windows (sim/model/queue.py)."""

    policy: Literal["naive", "sdk-default", "cost-aware"] = "sdk-default"
    max_retries: NonNegativeInt = 3
    backoff_base_s: Positive = 1.0
    queue_windows: PositiveInt = 5


class Streaming(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """With streaming, a bad completion is caught after `detect_bad_after_tokens` and a stalled call is
    cut after `stall_detect_s`; without it, the whole completion (or the whole timeout) is paid first."""

    enabled: bool = False
    detect_bad_after_tokens: PositiveInt = 40
    stall_detect_s: Positive = 5.0


class ModelQuality(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Eval score (0-100) of a model's answers on easy and on hard requests."""

    easy: Annotated[float, Meta(ge=0, le=100)]
    hard: Annotated[float, Meta(ge=0, le=100)]


class Quality(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Scores per model and difficulty, and what a wrong or missing answer scores."""

    models: dict[str, ModelQuality] = msgspec.field(default_factory=dict)
    false_hit: Annotated[float, Meta(ge=0, le=100)] = 10.0
    failed: Annotated[float, Meta(ge=0, le=100)] = 0.0
    denied: Annotated[float, Meta(ge=0, le=100)] = 0.0  # a request the cap blocked: no answer


class Cap(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An optional per-user monthly spend cap, applied in the forecast with the enforcer's own ledger.

    Each request that needs a model call authorizes its worst case first: `block` denies a request that
    no longer fits, `degrade` sends it to `degrade_model` when that fits (and denies it otherwise).
    """

    monthly_usd: Positive
    soft_threshold: Probability = 0.8
    action: Literal["block", "degrade"] = "block"
    degrade_model: str | None = None


class Scenario(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A whole what-if. `path` and `catalog` are filled in by load_scenario."""

    name: str = ""
    description: str = ""
    extends: str | list[str] = ""  # resolved by load_scenario; kept so a parsed table may still carry it
    traffic: Traffic = Traffic()
    prompts: Prompts = Prompts()
    cache: Caches = Caches()
    router: Router = Router()
    providers: dict[str, Provider] = msgspec.field(default_factory=dict)
    retry: Retry = Retry()
    streaming: Streaming = Streaming()
    quality: Quality = Quality()
    cap: Cap | None = None
    # [prices.MODEL] overrides, checked by budget/domain/price_overrides.py (rates, tiers, like).
    prices: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    @property
    def models(self) -> tuple[str, ...]:
        """The models this scenario calls, cheap first."""
        if self.router.enabled:
            return (self.router.cheap_model, self.router.expensive_model)
        return (self.router.model,)

    def provider(self, model: str) -> Provider:
        return self.providers.get(model, DEFAULT_PROVIDER)

    def quality_of(self, model: str) -> ModelQuality:
        return self.quality.models.get(model) or DEFAULT_QUALITY.get(model, FALLBACK_QUALITY)


DEFAULT_PROVIDER = Provider()

# Illustrative eval scores by model tier, used when a scenario gives none: frontier models are near the
# top on both; small models hold up on easy requests and fall off on hard ones. Replace them with your
# own eval set's numbers (`[quality.models.NAME]`).
_TIERS = {
    "frontier": ModelQuality(easy=94, hard=89),
    "mid": ModelQuality(easy=92, hard=80),
    "small": ModelQuality(easy=90, hard=70),
    "tiny": ModelQuality(easy=85, hard=55),
}
DEFAULT_QUALITY: dict[str, ModelQuality] = {
    **dict.fromkeys(
        ["gpt-4o", "gpt-4.1", "gpt-5", "claude-sonnet-4.5", "claude-opus-4.5"], _TIERS["frontier"]
    ),
    **dict.fromkeys(["gemini-2.5-pro", "o4-mini"], _TIERS["frontier"]),
    **dict.fromkeys(["gpt-5-mini", "gpt-4.1-mini", "claude-haiku-4.5", "gemini-2.5-flash"], _TIERS["mid"]),
    **dict.fromkeys(["gpt-4o-mini"], _TIERS["small"]),
    **dict.fromkeys(["gpt-5-nano", "gpt-4.1-nano", "gemini-2.5-flash-lite"], _TIERS["tiny"]),
}
FALLBACK_QUALITY = _TIERS["mid"]
