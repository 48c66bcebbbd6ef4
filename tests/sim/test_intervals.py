"""The two intervals of a replicated forecast: the confidence interval of the mean and the prediction
interval for one month."""

from __future__ import annotations

import math

from sim.model.forecast import forecast, t975
from sim.workbench.render import INTERVAL_LEGEND, forecast_table, usd
from sim.workbench.report import mau_table
from tests.sim.scenarios import scenario_from

REPLICATIONS = 8
SMALL = {"router": {"model": "gpt-4o-mini"}}


def test_the_prediction_interval_is_sqrt_r_plus_one_times_the_confidence_interval() -> None:
    scenario, catalog = scenario_from(SMALL)
    [result] = forecast(scenario, catalog, [120], 3, seed=5, replications=REPLICATIONS).results
    assert set(result["pi95"]) == set(result["ci95"])
    assert result["ci95"]["cost_usd"] > 0
    for key, of_the_mean in result["ci95"].items():
        for_one_month = result["pi95"][key]
        if of_the_mean == 0:
            assert for_one_month == 0, key
        else:
            assert math.isclose(for_one_month / of_the_mean, math.sqrt(REPLICATIONS + 1)), key


def test_a_fresh_month_falls_inside_the_prediction_interval_more_often_than_inside_the_ci() -> None:
    scenario, catalog = scenario_from(SMALL)
    [result] = forecast(scenario, catalog, [120], 3, seed=5, replications=REPLICATIONS).results
    mean, of_the_mean, for_one_month = (
        result["cost_usd"],
        result["ci95"]["cost_usd"],
        result["pi95"]["cost_usd"],
    )
    fresh = [
        forecast(scenario, catalog, [120], 3, seed=seed).results[0]["cost_usd"] for seed in range(100, 112)
    ]
    inside_ci = sum(abs(cost - mean) <= of_the_mean for cost in fresh)
    inside_pi = sum(abs(cost - mean) <= for_one_month for cost in fresh)
    # 95% of fresh months belong inside the prediction interval; the CI of the mean holds far fewer
    assert inside_pi >= 9, (inside_ci, inside_pi)
    assert inside_pi > inside_ci, (inside_ci, inside_pi)


def test_tables_and_the_report_name_both_intervals_and_one_run_has_neither() -> None:
    scenario, catalog = scenario_from(SMALL)
    replicated = forecast(scenario, catalog, [120], 3, seed=5, replications=3)
    single = forecast(scenario, catalog, [120], 3, seed=5)
    assert (
        "95% CI of the mean" in INTERVAL_LEGEND and "95% prediction interval for one month" in INTERVAL_LEGEND
    )
    result = replicated.results[0]
    cost = (
        f"{usd(result['cost_usd'])} ± {usd(result['ci95']['cost_usd'])} [± {usd(result['pi95']['cost_usd'])}]"
    )
    for text in (forecast_table(replicated), mau_table(replicated)):
        assert INTERVAL_LEGEND in text
        assert cost in text
    for text in (forecast_table(single), mau_table(single)):
        assert INTERVAL_LEGEND not in text and "±" not in text
    assert "ci95" not in single.results[0] and "pi95" not in single.results[0]


def test_the_t_quantile_past_the_table_follows_published_values_not_the_normal() -> None:
    # Student's t 97.5% quantiles from a printed table, beyond the 30 degrees of freedom the code lists.
    published = {31: 2.0395, 40: 2.0211, 50: 2.0086, 60: 2.0003, 80: 1.9901, 100: 1.9840, 120: 1.9799}
    for degrees, quantile in published.items():
        assert abs(t975(degrees) - quantile) < 2e-4, degrees
    assert t975(30) > t975(31) > t975(1000) > 1.96
