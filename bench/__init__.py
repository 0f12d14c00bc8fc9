"""The benchmark harness: ``python -m bench`` (``nox -s bench``, ``make bench``).

- :mod:`bench.workloads`: what is measured, by whom, against which baseline.
- :mod:`bench.measure`: timing in interleaved rounds, one row per contender.
- :mod:`bench.data`: the one seeded data set and the Redis namespaces.
- :mod:`bench.hits`, :mod:`bench.misses`, :mod:`bench.web`: the workloads.
- :mod:`bench.constant_app`: the constant-JSON endpoint the HTTP figures are set against.
- :mod:`bench.goals`, :mod:`bench.report`, :mod:`bench.chart`: ratios, tables, the SVG,
  all from the results file.
- :mod:`bench.run`: the command line.
"""
