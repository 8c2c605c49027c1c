"""dprl's benchmarks (``python -m benchmarks``, or ``scripts/bench``): one module per kind of
figure, the harness they share, and the helpers they share with the tests (``tests.support``)."""
