"""The what-if workbench: variants and sweeps, the cost-quality frontier, goal seek, the lever breakdown,
tables, figures and the HTML report."""
