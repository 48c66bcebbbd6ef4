"""Trend and period-to-period variation of usage over time, and the interval they put on a horizon's total.

The series: request counts in equal bins that end at the cut-off T (a day when the data before T holds at
least MIN_BINS days, else an hour, ten minutes, a minute, ten seconds or a second; a partial first bin is
left out). The model:

    count in bin k ~ mean exp(a + b * x_k),   x_k = k + 1/2 (the bin's middle, in bins)

fitted as a Poisson regression (a log-linear fit of the counts that estimates their mean and copes with
empty bins), its covariance widened by the overdispersion (Pearson chi-square per degree of freedom):
`growth per week` = exp(b * bins per week) - 1. The standard deviation of log((count + 1/2) / (fitted +
1/2)) over the bins, `dispersion`, is the period-to-period variation around the trend. Residuals of
real usage drift (a quiet stretch follows a quiet one), so their lag-1 autocorrelation rho is kept too.

The horizon's total over the next H bins is the integral of exp(a + b x) from n to n + H. Its
uncertainty, on the log scale, is the sum of three variances:
- the trend's: the regression's covariance of (a, b) carried through the log of the integral (delta
  method);
- the periods' own variation: dispersion^2 / H x (1 + 2 sum_{k<H} (1 - k/H) rho^k), the variance of the
  mean of H AR(1) terms (H independent bins would average out to dispersion^2 / H; drift averages out
  less);
- whatever the caller adds (the simulation's own spread across replications, sim/calibration/backtest.py).
The interval is exp(log total +- t * sqrt(variance)), t the Student quantile with n - 2 degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.errors import BacktestError

BIN_WIDTHS_S = (86400.0, 3600.0, 600.0, 60.0, 10.0, 1.0)
MIN_BINS = 8  # the widest bin that leaves this many before T
FEWEST_BINS = 3  # a line and its residual spread need at least three points
SECONDS_PER_WEEK = 7 * 86400.0
MAX_AUTOCORRELATION = 0.95
MAX_EXPONENT = 700.0  # exp() of more overflows a float


@dataclass(frozen=True, slots=True)
class Trend:
    """A log-linear trend of bin counts: intercept and slope per bin, their covariance, and the spread."""

    bin_s: float
    bins: int
    intercept: float
    slope: float
    covariance: tuple[tuple[float, float], tuple[float, float]]
    dispersion: float
    autocorrelation: float

    @property
    def growth_per_week(self) -> float:
        """Relative growth over a week: +0.10 is 10% more requests a week later."""
        return self.growth(SECONDS_PER_WEEK)

    @property
    def growth_per_week_se(self) -> float:
        return self.growth_se(SECONDS_PER_WEEK)

    def growth(self, period_s: float) -> float:
        """Relative growth over `period_s` seconds (infinite past what a float holds)."""
        exponent = self.slope * period_s / self.bin_s
        return math.expm1(exponent) if exponent < MAX_EXPONENT else math.inf

    def growth_se(self, period_s: float) -> float:
        """Standard error of growth(period_s) (delta method)."""
        periods = period_s / self.bin_s
        exponent = self.slope * periods
        if exponent >= MAX_EXPONENT:
            return math.inf
        return math.exp(exponent) * periods * math.sqrt(self.covariance[1][1])

    def horizon_bins(self, horizon_s: float) -> float:
        return horizon_s / self.bin_s

    def project(self, horizon_s: float) -> float:
        """The expected total count over the horizon that starts at T."""
        return math.exp(_log_integral(self.intercept, self.slope, self.bins, self.horizon_bins(horizon_s)))

    def trend_variance(self, horizon_s: float) -> float:
        """Variance of log(projected total) from the uncertainty of intercept and slope."""
        h = self.horizon_bins(horizon_s)
        step = 1e-6
        up = _log_integral(self.intercept, self.slope + step, self.bins, h)
        down = _log_integral(self.intercept, self.slope - step, self.bins, h)
        gradient = np.array([1.0, (up - down) / (2 * step)])
        return float(gradient @ np.asarray(self.covariance) @ gradient)

    def noise_variance(self, horizon_s: float, dispersion: float | None = None) -> float:
        """Variance of the log of the horizon's total from the bins' own variation (AR(1) averaging);
        `dispersion` replaces the requests' own for another quantity measured in the same bins."""
        spread = self.dispersion if dispersion is None else dispersion
        h = max(math.ceil(self.horizon_bins(horizon_s) - 1e-9), 1)
        rho = self.autocorrelation
        inflation = 1 + 2 * sum((1 - k / h) * rho**k for k in range(1, h))
        return spread**2 / h * inflation

    def t_quantile(self, level: float) -> float:
        """The two-sided Student t quantile for `level` with the fit's degrees of freedom."""
        return student_t_quantile(0.5 + level / 2, self.bins - 2)

    def residual_spread(self, counts: np.ndarray) -> float:
        """The spread of another quantity's log bin totals around this trend's shape (its own level)."""
        logs = np.log(np.maximum(counts, 0.5)) - self._line()
        return float(np.sqrt(((logs - logs.mean()) ** 2).sum() / max(self.bins - 2, 1)))

    def _line(self) -> np.ndarray:
        return self.intercept + self.slope * (np.arange(self.bins) + 0.5)


def choose_bin(training_s: float) -> float:
    """The widest bin that leaves MIN_BINS whole bins before T, else the narrowest that leaves FEWEST_BINS."""
    for width in BIN_WIDTHS_S:
        if training_s // width >= MIN_BINS:
            return width
    narrowest = BIN_WIDTHS_S[-1]
    if training_s // narrowest >= FEWEST_BINS:
        return narrowest
    raise BacktestError(
        "--train-until",
        f"the part before it spans {training_s:,.1f} s: at least {FEWEST_BINS:.0f} s are needed "
        "to fit a trend",
    )


def bin_totals(
    t: np.ndarray, weights: np.ndarray | None, until: float, bin_s: float, bins: int
) -> np.ndarray:
    """Totals of `weights` (counts when None) in the `bins` bins of `bin_s` seconds that end at `until`."""
    start = until - bins * bin_s
    inside = (t >= start) & (t < until)
    index = ((t[inside] - start) // bin_s).astype(np.int64)
    np.minimum(index, bins - 1, out=index)  # float rounding at the last edge
    chosen = None if weights is None else weights[inside]
    return np.bincount(index, weights=chosen, minlength=bins)[:bins].astype(np.float64)


def fit_trend(counts: np.ndarray, bin_s: float) -> Trend:
    """The log-linear trend of `counts` (one per bin, oldest first) and the spread around it."""
    n = counts.size
    if n < FEWEST_BINS:
        raise BacktestError("--train-until", f"{n} bins before it: at least {FEWEST_BINS} are needed")
    x = np.arange(n) + 0.5
    design = np.column_stack([np.ones(n), x])
    beta, information = _poisson_fit(design, counts.astype(np.float64))
    fitted = np.exp(design @ beta)
    pearson = float((((counts - fitted) ** 2) / fitted).sum()) / (n - 2)
    covariance = max(pearson, 1.0) * np.linalg.inv(information)
    residual = np.log((counts + 0.5) / (fitted + 0.5))
    return Trend(
        bin_s=bin_s,
        bins=n,
        intercept=float(beta[0]),
        slope=float(beta[1]),
        covariance=(
            (float(covariance[0, 0]), float(covariance[0, 1])),
            (float(covariance[1, 0]), float(covariance[1, 1])),
        ),
        dispersion=math.sqrt(float(residual @ residual) / (n - 2)),
        autocorrelation=_lag_one(residual),
    )


def _poisson_fit(design: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-link Poisson regression by iteratively reweighted least squares: the coefficients and the
    information matrix. Unlike least squares on log counts it estimates the mean (not the median) and
    takes sparse bins (a few requests a second) without a fudge for log(0)."""
    beta = np.linalg.lstsq(design, np.log(counts + 0.5), rcond=None)[0]
    information = design.T @ design
    for _ in range(50):
        mean = np.exp(np.clip(design @ beta, -30.0, 30.0))
        information = design.T @ (design * mean[:, None])
        step = np.linalg.solve(information, design.T @ (counts - mean))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    mean = np.exp(np.clip(design @ beta, -30.0, 30.0))
    return beta, design.T @ (design * mean[:, None])


def _lag_one(residual: np.ndarray) -> float:
    """Lag-1 autocorrelation of the residuals, in [0, MAX_AUTOCORRELATION] (alternation is not credited)."""
    if residual.size < 4 or not np.any(residual):
        return 0.0
    centred = residual - residual.mean()
    rho = float(centred[1:] @ centred[:-1]) / float(centred @ centred)
    return min(max(rho, 0.0), MAX_AUTOCORRELATION)


def _log_integral(a: float, b: float, start: float, length: float) -> float:
    """log of the integral of exp(a + b x) over [start, start + length]."""
    if abs(b * length) < 1e-9:
        return a + b * (start + length / 2) + math.log(length)
    return a + b * start + math.log(math.expm1(b * length) / b)


def student_t_quantile(probability: float, degrees: int) -> float:
    """The `probability` quantile (above 1/2) of Student's t with `degrees` degrees of freedom: bisection on
    its distribution function, integrated by Simpson's rule (numpy has no t distribution)."""
    log_norm = math.lgamma((degrees + 1) / 2) - math.lgamma(degrees / 2) - 0.5 * math.log(degrees * math.pi)

    def upper_half(x: float) -> float:  # P(0 < T < x)
        grid = np.linspace(0.0, x, 2001)
        density = np.exp(log_norm - (degrees + 1) / 2 * np.log1p(grid**2 / degrees))
        step = x / 2000
        return float(
            step / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
        )

    target = probability - 0.5
    low, high = 0.0, 1.0
    while upper_half(high) < target:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if upper_half(middle) < target else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True, slots=True)
class VolumeForecast:
    """The horizon's requests: from the trend or from the last period, whichever forecast the training
    part's own later stretches better, and the spread of the log of the total."""

    method: str  # "trend" or "last period"
    total: float
    log_sd: float
    checks: int  # earlier cut-offs inside the training part the two methods were tried at
    trend_error: float | None  # root mean square log error of each there (None: too few checks)
    level_error: float | None


def forecast_volume(trend: Trend, counts: np.ndarray, horizon_s: float) -> VolumeForecast:
    """Choose between the trend and the last period by forecasting the training part from inside it.

    At each earlier cut-off k (from a quarter of the bins on, at least five, while a whole horizon of
    bins follows it), both forecast the next ceil(H) bins from the bins before k: the trend fitted on
    them, and the mean of their last ceil(H) bins. The method with the smaller root mean square log
    error is used; the interval's log spread is the larger of that error and what the model says (the
    trend: its covariance and the bins' AR(1) variation; the last period: the bins' AR(1) variation of
    a level measured over the same number of bins, counted twice -- the level's own error and the
    horizon's). With fewer than three cut-offs to try, the trend is used as the model says.
    """
    ahead = max(math.ceil(trend.horizon_bins(horizon_s) - 1e-9), 1)
    level_total = float(counts[-ahead:].mean()) * trend.horizon_bins(horizon_s)
    trend_sd = math.sqrt(trend.trend_variance(horizon_s) + trend.noise_variance(horizon_s))
    level_sd = math.sqrt(2 * trend.noise_variance(horizon_s))
    origins = range(max(FEWEST_BINS + 2, counts.size // 4), counts.size - ahead + 1)
    if len(origins) < FEWEST_BINS:
        return VolumeForecast("trend", trend.project(horizon_s), trend_sd, len(origins), None, None)
    trend_errors, level_errors = [], []
    for k in origins:
        actual = float(counts[k : k + ahead].sum()) + 0.5
        earlier = fit_trend(counts[:k], trend.bin_s)
        trend_errors.append(math.log((earlier.project(ahead * trend.bin_s) + 0.5) / actual))
        level_errors.append(math.log((float(counts[max(k - ahead, 0) : k].mean()) * ahead + 0.5) / actual))
    trend_error = math.sqrt(float(np.mean(np.square(trend_errors))))
    level_error = math.sqrt(float(np.mean(np.square(level_errors))))
    if trend_error <= level_error:
        total, sd, method = trend.project(horizon_s), max(trend_sd, trend_error), "trend"
    else:
        total, sd, method = level_total, max(level_sd, level_error), "last period"
    return VolumeForecast(method, total, sd, len(origins), trend_error, level_error)
