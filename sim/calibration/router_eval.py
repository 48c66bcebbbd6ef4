"""The built-in router classifier and its eval: rules mark a request hard, an eval set measures the rules.

Pure: rules arrive as an already-parsed TOML table, requests as text; reading files, hashing them and
writing DuckDB live in `sim.calibration.router_eval_io`. What an eval measures is what a scenario's
`[router]` takes:
`hard_to_expensive` (recall on hard requests) and `easy_to_expensive` (easy requests sent up anyway).

A rules table:

    min_words = 25                          # optional: a request this long is hard
    [[hard]]
    name = "dispute"                        # optional: how the rule is named in reasons
    pattern = "(?i)\\b(dispute|fraud)\\b"   # a Python regex, searched anywhere in the text
    [[hard]]
    keywords = ["stolen", "charged twice"]  # or phrases, matched as whole words, any case
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sim.errors import RulesError

Label = Literal["easy", "hard"]
LABELS: tuple[Label, ...] = ("easy", "hard")

_TOP_KEYS = ("description", "hard", "min_words")
_RULE_KEYS = ("keywords", "name", "pattern")


@dataclass(frozen=True, slots=True)
class Rule:
    """One way a request is marked hard: a regex or a list of keywords, compiled to one regex."""

    name: str
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Rules:
    """A validated rules file: any rule firing, or `min_words` reached, routes to the expensive model."""

    hard: tuple[Rule, ...]
    min_words: int | None = None
    description: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Every rule's name in the order reasons report them (min_words last, when set)."""
        return (*(r.name for r in self.hard), *(("min_words",) if self.min_words is not None else ()))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the classifier said about one request, and why: the names of the rules that fired."""

    label: Label
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled request of an eval set; `line` is where it sits in its file (1-based)."""

    text: str
    label: Label
    line: int = 0


def parse_rules(data: Mapping[str, Any], where: str) -> Rules:
    """Validate an already-parsed rules table; `where` names the file in errors."""
    _check_keys(data, _TOP_KEYS, where, "")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise RulesError(where, "description", "expected a string")
    min_words = data.get("min_words")
    if min_words is not None and (
        isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1
    ):
        raise RulesError(where, "min_words", f"expected a whole number >= 1, got {min_words!r}")
    entries = data.get("hard", [])
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise RulesError(where, "hard", "expected [[hard]] tables")
    rules = tuple(_parse_rule(entry, where, f"hard[{i}]") for i, entry in enumerate(entries))
    if not rules and min_words is None:
        raise RulesError(where, "hard", "no rules: add [[hard]] tables or min_words")
    names = [r.name for r in rules]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise RulesError(where, "hard", f"two rules are named {duplicate!r}; reasons need unique names")
    return Rules(hard=rules, min_words=min_words, description=description)


def _parse_rule(entry: Mapping[str, Any], where: str, field: str) -> Rule:
    _check_keys(entry, _RULE_KEYS, where, f"{field}.")
    name = entry.get("name", field)
    if not isinstance(name, str) or not name:
        raise RulesError(where, f"{field}.name", "expected a non-empty string")
    has_pattern, has_keywords = "pattern" in entry, "keywords" in entry
    if has_pattern == has_keywords:
        raise RulesError(where, field, "expected exactly one of pattern (a regex) or keywords (a list)")
    if has_pattern:
        pattern = entry["pattern"]
        if not isinstance(pattern, str) or not pattern:
            raise RulesError(where, f"{field}.pattern", "expected a non-empty regex string")
        try:
            return Rule(name, re.compile(pattern))
        except re.error as error:
            raise RulesError(where, f"{field}.pattern", f"not a valid regex: {error}") from None
    keywords = entry["keywords"]
    if (
        not isinstance(keywords, list)
        or not keywords
        or not all(isinstance(k, str) and k.strip() for k in keywords)
    ):
        raise RulesError(where, f"{field}.keywords", "expected a non-empty list of non-empty strings")
    # Whole words only: "stolen" must not fire inside an unrelated longer word, nor "pin" in "shipping".
    alternatives = "|".join(re.escape(k.strip()) for k in keywords)
    return Rule(name, re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE))


def _check_keys(table: Mapping[str, Any], valid: Sequence[str], where: str, prefix: str) -> None:
    """Reject unknown keys with a close match: a typo must not silently disable a rule."""
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RulesError(
                where, f"{prefix}{key}", f"unknown key{hint}; valid keys here: {', '.join(valid)}"
            )


def classify(text: str, rules: Rules) -> Verdict:
    """Route one request: "hard" (expensive model) when any rule fires, with the names of those that did."""
    # Typographic apostrophes are common in pasted text; rules are written with the plain one.
    normalized = text.replace("\u2019", "'").replace("\u2018", "'")
    reasons = [rule.name for rule in rules.hard if rule.regex.search(normalized)]
    if rules.min_words is not None and len(normalized.split()) >= rules.min_words:
        reasons.append("min_words")
    return Verdict("hard" if reasons else "easy", tuple(reasons))


@dataclass(frozen=True, slots=True)
class Confusion:
    """True label (easy / hard) by where the classifier routed it (cheap / expensive)."""

    easy_cheap: int
    easy_expensive: int
    hard_cheap: int
    hard_expensive: int

    @property
    def total(self) -> int:
        return self.easy_cheap + self.easy_expensive + self.hard_cheap + self.hard_expensive

    @property
    def easy(self) -> int:
        return self.easy_cheap + self.easy_expensive

    @property
    def hard(self) -> int:
        return self.hard_cheap + self.hard_expensive

    @property
    def accuracy(self) -> float:
        """Share routed where their label says: easy to cheap, hard to expensive."""
        return (self.easy_cheap + self.hard_expensive) / self.total if self.total else 0.0

    @property
    def hard_to_expensive(self) -> float:
        """Recall on hard requests: the `[router]` share of hard requests the expensive model gets."""
        return self.hard_expensive / self.hard if self.hard else 0.0

    @property
    def easy_to_expensive(self) -> float:
        """Easy requests sent to the expensive model anyway: cost without a quality gain."""
        return self.easy_expensive / self.easy if self.easy else 0.0

    @classmethod
    def of(cls, pairs: Iterable[tuple[Label, Label]]) -> Confusion:
        """Count (true label, routed label) pairs; routed "hard" means the expensive model."""
        counts = {(t, r): 0 for t in LABELS for r in LABELS}
        for pair in pairs:
            counts[pair] += 1
        return cls(
            easy_cheap=counts["easy", "easy"],
            easy_expensive=counts["easy", "hard"],
            hard_cheap=counts["hard", "easy"],
            hard_expensive=counts["hard", "hard"],
        )


@dataclass(frozen=True, slots=True)
class RuleCount:
    """How often one rule fired, split by the true label: firing on easy requests is what it costs."""

    name: str
    on_hard: int
    on_easy: int


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The rules run over an eval set: the confusion matrix, per-rule counts and every verdict."""

    confusion: Confusion
    rule_counts: tuple[RuleCount, ...]
    examples: tuple[Example, ...]
    verdicts: tuple[Verdict, ...]

    def misses(self) -> list[tuple[Example, Verdict]]:
        """The requests routed against their label, in set order."""
        return [(e, v) for e, v in zip(self.examples, self.verdicts, strict=True) if e.label != v.label]


def evaluate(examples: Sequence[Example], rules: Rules) -> Evaluation:
    """Classify every example with the rules and count the outcomes."""
    return tally(examples, tuple(classify(e.text, rules) for e in examples), rules.names)


def tally(
    examples: Sequence[Example], verdicts: Sequence[Verdict], reasons: Sequence[str] = ()
) -> Evaluation:
    """Count a classifier's verdicts against the labels; `reasons` names the rules to count hits of."""
    pairs = list(zip(examples, verdicts, strict=True))
    confusion = Confusion.of((e.label, v.label) for e, v in pairs)
    counts = [
        RuleCount(
            name,
            on_hard=sum(name in v.reasons for e, v in pairs if e.label == "hard"),
            on_easy=sum(name in v.reasons for e, v in pairs if e.label == "easy"),
        )
        for name in reasons
    ]
    return Evaluation(confusion, tuple(counts), tuple(examples), tuple(verdicts))
