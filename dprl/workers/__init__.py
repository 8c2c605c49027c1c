"""``--workers N``: one supervisor and N worker processes on one port.

- ``supervisor``: starts, watches and restarts the workers; holds the port and the table.
- ``seat``: what a worker is told by its supervisor (encoded once, decoded once).
- ``cpus``: how many CPUs ``--workers auto`` may use (affinity, cgroup quota).
- ``slot_table``: the machine's counts in shared memory (local mode).
- ``limiter``: a worker's limiter over that table.
- ``admin``: the supervisor's admin listener, asking each worker and merging the answers.
"""
