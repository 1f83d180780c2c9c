"""Compatibility layers that let code written for other serving frameworks run on shmserve.

`shmserve.compat.bentoml`: BentoML 1.1's Runner programming model.
"""
