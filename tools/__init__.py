"""Tools beside the runtime, never in the serving image: the serving benchmark
(``python -m tools.bench_serve``, ``make bench-serve``) and the chart's values schema
generator (``python -m tools.chart_schema``)."""
