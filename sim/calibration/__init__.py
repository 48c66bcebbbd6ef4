"""The forecast against real data: trace replay, fit, forecast error, the router eval and the semantic-cache
calibration."""
