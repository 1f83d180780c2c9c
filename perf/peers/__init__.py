"""Peer serving systems (BentoML 1.1.11, Mosec) on the common workload, each in its own venv.

Install with ``bash perf/peers/install.sh``; the suite finds them under
``perf/peers/.venvs/<name>`` and skips (saying so) any that is missing.
"""
