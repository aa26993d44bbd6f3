"""`[release.canary]` of bentoship.toml: how a canary is judged, every knob with its default.

The defaults, and why (Spinnaker's canary best practices, https://spinnaker.io/docs/guides/
user/canary/best-practices/, and how Kayenta's NetflixACAJudge decides; see docs/canary.md):

- `scrape_interval_seconds = 15`: the interval of the Prometheus job that scrapes the pods
  (`prometheus-scrape.yaml`, rendered with it). Windows and steps are checked against it.
- `step_seconds = 15`: Kayenta's query step, one point per step. Not below the scrape interval
  (points in between repeat the last sample).
- `rate_window_seconds = 60`: the window of every `rate()`. At least 4 scrape intervals, or
  `rate()` over a window holding fewer than two samples is empty at some steps (Nodata); at
  least 2 steps.
- `interval_minutes = 15`, `lifetime = "PT45M"`: Kayenta judges every interval over the data
  since the start; an interval holds `interval_minutes * 60 / step_seconds` points, at least
  `MIN_POINTS` (50, Spinnaker's guidance), so the first judgement already has 60.
- `replicas = 2`: pods per arm. One pod is one process's noise; two keep one slow pod from
  deciding the canary.
- `[release.canary.effect_sizes]`: how much change is tolerated. Kayenta classifies a metric
  High or Low only when the Mann-Whitney test finds a difference *and* the ratio of means
  reaches the allowed effect; a critical metric fails the whole canary when the ratio reaches
  the critical effect. Errors: 1.5x allowed, 2x critical (a zero baseline makes the ratio
  undefined: then any significant increase counts, as Kayenta does). Latency: the mean 1.25x
  allowed, 2x critical; the p99 1.5x, never critical (one slow request moves it). Answers:
  a shift of the mean score, confidence or value by 10% is allowed, 25% is critical; an
  intended change of a model's answers beyond that is a release to make without the canary's
  blessing (`promote=false`, then a decision by a person).
- `group_weights` (errors 50, latency 25, predictions 25, summing to 100) and `thresholds`
  (pass 95, marginal 75): the canary score is the weighted share of passing metrics per group.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# The canary analysis groups every release's canary config has (pipeline/release/kayenta.py).
CANARY_GROUPS = ("errors", "latency", "predictions")
MIN_POINTS = 50  # points per judged interval, Spinnaker's canary guidance
MIN_SCRAPES_PER_WINDOW = 4

_ISO_MINUTES = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?$")
_ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _account(value: str) -> str:
    if not _ACCOUNT.match(value):
        raise ValueError(f"{value!r} is not allowed: use letters, digits, '.', '_' and '-'")
    return value


AccountName = Annotated[str, AfterValidator(_account)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ScoreThresholds(_Model):
    marginal: int = Field(default=75, ge=0, le=100)
    pass_: int = Field(default=95, ge=0, le=100, alias="pass")

    @model_validator(mode="after")
    def _ordered(self) -> ScoreThresholds:
        if self.marginal >= self.pass_:
            raise ValueError(
                f"marginal ({self.marginal}) must be lower than pass ({self.pass_}); both are "
                "canary scores from 0 to 100"
            )
        return self


class Effect(_Model):
    """Ratios of the canary's mean to the baseline's: tolerated (`allowed`) and failing the
    canary on a critical metric (`critical`). For an increase; a decrease uses 1/ratio."""

    allowed: float = Field(ge=1.0, le=100.0)
    critical: float | None = Field(default=None, ge=1.0, le=100.0)

    @model_validator(mode="after")
    def _ordered(self) -> Effect:
        if self.critical is not None and self.critical < self.allowed:
            raise ValueError(
                f"critical ({self.critical}) must be at least allowed ({self.allowed})"
            )
        return self


class EffectSizes(_Model):
    errors: Effect = Effect(allowed=1.5, critical=2.0)
    latency: Effect = Effect(allowed=1.25, critical=2.0)
    latency_p99: Effect = Effect(allowed=1.5)
    answers: Effect = Effect(allowed=1.1, critical=1.25)


def lifetime_minutes(value: int | str) -> int:
    if isinstance(value, int):
        return value
    match = _ISO_MINUTES.match(value)
    if not match or not any(match.groups()):
        raise ValueError(
            f"{value!r} is not a lifetime: use minutes (e.g. 30) or an ISO-8601 duration "
            "in hours and minutes (e.g. 'PT30M', 'PT1H30M')"
        )
    return int(match[1] or 0) * 60 + int(match[2] or 0)


class Canary(_Model):
    """`[release.canary]`: every field has a default (see the module docstring for why)."""

    lifetime: int | str = "PT45M"
    interval_minutes: int = Field(default=15, ge=1, le=1440)
    begin_after_minutes: int = Field(default=0, ge=0, le=1440)
    scrape_interval_seconds: int = Field(default=15, ge=1, le=300)
    step_seconds: int = Field(default=15, ge=1, le=600)
    rate_window_seconds: int | None = Field(default=None, ge=1, le=3600)
    replicas: int = Field(default=2, ge=1, le=100)
    thresholds: ScoreThresholds = ScoreThresholds()
    effect_sizes: EffectSizes = EffectSizes()
    metrics_account: AccountName = "prometheus"
    storage_account: AccountName = "kayenta-storage"
    group_weights: dict[str, int] = Field(
        default_factory=lambda: {"errors": 50, "latency": 25, "predictions": 25}
    )

    @model_validator(mode="after")
    def _consistent(self) -> Canary:
        minutes = lifetime_minutes(self.lifetime)
        if not 1 <= minutes <= 24 * 60:
            raise ValueError(f"lifetime ({self.lifetime!r}) must be between 1 minute and 24 hours")
        if self.interval_minutes > minutes:
            raise ValueError(
                f"interval_minutes ({self.interval_minutes}) is longer than the lifetime "
                f"({minutes} minutes): the analysis would never run"
            )
        if self.step_seconds < self.scrape_interval_seconds:
            raise ValueError(
                f"step_seconds ({self.step_seconds}) is shorter than scrape_interval_seconds "
                f"({self.scrape_interval_seconds}): points between two scrapes repeat a sample"
            )
        floor = MIN_SCRAPES_PER_WINDOW * self.scrape_interval_seconds
        if self.window_seconds < max(floor, 2 * self.step_seconds):
            raise ValueError(
                f"rate_window_seconds ({self.window_seconds}) must be at least "
                f"{MIN_SCRAPES_PER_WINDOW} scrape intervals ({floor} s) and 2 steps "
                f"({2 * self.step_seconds} s), or rate() is empty at some steps"
            )
        points = self.interval_minutes * 60 // self.step_seconds
        if points < MIN_POINTS:
            raise ValueError(
                f"an interval of {self.interval_minutes} min at step_seconds "
                f"{self.step_seconds} judges {points} points; Kayenta needs at least "
                f"{MIN_POINTS}: lengthen interval_minutes to "
                f"{-(-MIN_POINTS * self.step_seconds // 60)} or shorten the step"
            )
        if sorted(self.group_weights) != sorted(CANARY_GROUPS):
            raise ValueError(
                f"group_weights has groups {sorted(self.group_weights)}; "
                f"allowed and required: {list(CANARY_GROUPS)}"
            )
        if any(w < 0 for w in self.group_weights.values()):
            raise ValueError(f"group_weights must not be negative: {self.group_weights}")
        total = sum(self.group_weights.values())
        if total != 100:
            raise ValueError(f"group_weights must sum to 100, they sum to {total}")
        return self

    @property
    def window_seconds(self) -> int:
        """The window of every `rate()`: configured, or 4 scrape intervals (at least 2 steps)."""
        if self.rate_window_seconds is not None:
            return self.rate_window_seconds
        return max(MIN_SCRAPES_PER_WINDOW * self.scrape_interval_seconds, 2 * self.step_seconds)

    @property
    def lifetime_duration(self) -> str:
        """The lifetime as the ISO-8601 duration Orca reads (`PT1H30M`)."""
        hours, minutes = divmod(lifetime_minutes(self.lifetime), 60)
        return "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
